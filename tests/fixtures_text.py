"""A small UMT5-style tokenizer trained on the fly (no network): a Hub ``tokenizer/`` folder for tests.

``make_test_tokenizer_folder(path)`` trains a sentencepiece unigram model (byte fallback on, ``<pad>``=0,
``</s>``=1, ``<unk>``=2 like UMT5's) on a generated multilingual corpus, wraps it in transformers'
``T5TokenizerFast`` and saves the folder as the Hub has it: ``tokenizer.json``, ``tokenizer_config.json``
and ``spiece.model``. Takes about a second.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

WORDS = (  # noqa: SIM905 (a sentence reads better than 55 quoted words)
    "a photo of the cat dog red blue green turn make it into watercolor painting sky house tree person wearing "
    "hat glasses remove add background change color light night day car street city river mountain old young "
    "woman man smiling standing sitting next to under over bright dark style oil sketch pencil cartoon in on"
).split()
ACCENTED = "café naïve Zürich señor façade jalapeño crème brûlée São Paulo Ångström Ærø déjà vu Müller".split()  # noqa: SIM905
CJK = ["一只猫", "红色的", "天空", "把背景换成夜晚", "写真", "ねこ", "東京", "山", "水彩画", "사진", "고양이", "帽子"]
EMOJI = ["🙂", "🐱", "🎨", "✨"]  # others (🦙, 🦄, …) stay out of the vocabulary: byte fallback / <unk>


def corpus(n_lines: int = 4000, seed: int = 0) -> Iterator[str]:
    rng = random.Random(seed)
    pools = [(0.70, WORDS), (0.85, ACCENTED), (0.97, CJK), (1.01, EMOJI)]
    for _ in range(n_lines):
        words = []
        for _ in range(rng.randint(3, 15)):
            r = rng.random()
            words.append(rng.choice(next(pool for p, pool in pools if r < p)))
        yield " ".join(words)


def _fields(buf: bytes) -> Iterator[tuple[int, bytes | int]]:
    """(field number, value) of a serialised protobuf message: enough to read a sentencepiece model's
    ``normalizer_spec.precompiled_charsmap`` without the protobuf package."""

    def varint(i: int) -> tuple[int, int]:
        out = shift = 0
        while True:
            b = buf[i]
            out |= (b & 0x7F) << shift
            shift, i = shift + 7, i + 1
            if b < 0x80:
                return out, i

    i = 0
    while i < len(buf):
        key, i = varint(i)
        wire = key & 7
        if wire == 0:
            value, i = varint(i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        elif wire == 2:
            n, i = varint(i)
            value, i = buf[i : i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield key >> 3, value


def precompiled_charsmap(model_proto: bytes) -> bytes:
    """ModelProto.normalizer_spec (field 3) .precompiled_charsmap (field 2)."""
    normalizer = next(v for n, v in _fields(model_proto) if n == 3)
    return next(v for n, v in _fields(normalizer) if n == 2)


def make_test_tokenizer_folder(path: str | Path, vocab_size: int = 700, extra_ids: int = 100) -> Path:
    """Train the test sentencepiece model and write a T5TokenizerFast Hub folder to ``path``; returns it.

    The fast tokenizer is built as transformers builds it from ``spiece.model`` (pieces and scores, then
    ``extra_ids`` sentinels in reverse order, the model's normaliser charsmap); done here by hand because that
    conversion in transformers 5 needs the protobuf package.
    """
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    from tools.make_tiny_tokenizer import train_unigram

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    train_unigram(corpus(), path / "spiece.model", vocab_size, character_coverage=0.995)
    proto = (path / "spiece.model").read_bytes()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(extra_ids))]
    tok = T5TokenizerFast(
        vocab=vocab,
        _spm_precompiled_charsmap=precompiled_charsmap(proto),
        extra_ids=extra_ids,
        additional_special_tokens=["<pad>", "</s>"],
    )
    tok.save_pretrained(str(path))
    return path


# Strings for tokenizer parity: ASCII, accents, CJK, emoji in and out of the vocabulary, HTML entities, odd
# whitespace and unicode that the normaliser rewrites, literal special tokens, an empty prompt, long prompts.
PARITY_STRINGS: list[str] = [
    "",
    " ",
    "a photo of the cat",
    "turn the sky into a watercolor painting",
    "Make it night.",
    "A RED CAR ON THE STREET!!!",
    "remove the hat, add glasses; change the background to a city",
    "1234 5678 90 3.14159 1e-5",
    "email: someone@example.com, url: https://example.com/a?b=c&d=e",
    "café naïve Zürich",
    "crème brûlée in São Paulo",
    "Ångström Ærø déjà vu",
    "Müller's façade, jalapeño",
    "e\u0301 combining accent vs é",
    "一只猫在天空",
    "把背景换成夜晚",
    "ねこ 写真 東京",
    "고양이 사진",
    "水彩画 style cat 帽子",
    "未知的字符 αβγ δ",
    "🙂🐱🎨✨",
    "a cat 🐱 with a hat 🎨",
    "llama 🦙 and unicorn 🦄",
    "🦙🦄🦕",
    "x🦙y",
    "mixed 🙂🦙🙂",
    "&amp; &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;apos&#39;",
    "&amp;amp; double-escaped",
    "Tom &amp; Jerry",
    "  leading and trailing spaces  ",
    "many     inner      spaces",
    "tabs\tand\nnewlines\r\nand\x0bvertical",
    "no\u00a0break\u3000ideographic\u2009thin",
    "zero\u200bwidth joiner\u200d",
    "control\x1cchars\x07here",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
    "ligatures ﬁ ﬂ and roman Ⅻ ①",
    "</s> literal eos",
    "<pad> and <unk> in text",
    "sentinel <extra_id_0> and <extra_id_99>",
    "glued</s>text<extra_id_5>x",
    "<s> not special </ s>",
    "quotes “curly” ‘single’ — dash – en … ellipsis",
    "math ∑ ∫ √ ≤ ≥ ≠ ∞",
    "Ελληνικά Русский العربية עברית हिन्दी",
    "the cat " * 20,
    "a very long prompt about a painting of a mountain and a river at night " * 40,
    "年" * 600,  # one unknown character repeated: one <unk>
    "一只猫 天空 " * 300,
    "🦙" * 50,
    "word " * 700,
    "MiXeD CaSe WoRdS",
    "punctuation!?.,;:()[]{}<>/\\|@#$%^&*-_=+~`",
    "newline at end\n",
]
