"""Train the demo tokenizer shipped in chronoedit/assets/tiny_tokenizer (a small sentencepiece unigram model).

    python tools/make_tiny_tokenizer.py

UMT5's conventions (pad 0, eos 1, unk 2, byte fallback), 700 pieces; the tiny demo UMT5 has a 1024-token
vocabulary. Only ``spiece.model`` is written: our tokenizer's sentencepiece path reads it directly.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

WORDS = (  # noqa: SIM905 (a sentence reads better than 120 quoted words)
    "a an the of in on at to with and or above below behind next near under over into from by for "
    "add remove replace change make turn put place move give paint draw colour color style photo picture "
    "red green blue yellow white black orange purple pink brown grey golden silver bright dark "
    "house roof door window tree sky cloud sun moon star hill mountain river lake sea beach road car "
    "cat dog bird horse fish person man woman child hat glasses sunglasses scarf coat dress shoes "
    "balloon hot-air kite boat plane flower grass snow rain night day morning evening light shadow "
    "big small tall short round square old new happy sad smiling running sitting standing flying floating"
).split()


def corpus(n: int = 3000, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        yield " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))


def train_unigram(sentences: Iterable[str], dest: Path, vocab_size: int, **options) -> Path:
    """Train a sentencepiece unigram model with UMT5's conventions (pad 0, eos 1, unk 2, no bos, byte fallback)
    on ``sentences`` and write it to ``dest`` (a ``spiece.model`` path). ``options`` go to the trainer."""
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "spiece")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_prefix=prefix,
            model_type="unigram",
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            byte_fallback=True,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            num_threads=1,
            minloglevel=2,
            **options,
        )
        shutil.copy(prefix + ".model", dest)
    return dest


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "chronoedit" / "assets" / "tiny_tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    print(f"wrote {train_unigram(corpus(), out / 'spiece.model', vocab_size=700)}")


if __name__ == "__main__":
    main()
