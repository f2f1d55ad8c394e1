"""The UMT5 tokenizer: the ids of transformers' ``T5TokenizerFast``, from a Hub ``tokenizer/`` folder.

Two backends give the same ids:

- ``tokenizer.json`` through the ``tokenizers`` library: the file's own pipeline (normaliser, pre-tokeniser,
  Unigram model, added tokens), exactly what ``T5TokenizerFast`` runs;
- ``spiece.model`` alone through ``sentencepiece``, adjusted to what ``T5TokenizerFast`` makes of that file:
  added tokens (``</s>``, ``<pad>``, ``<unk>``, ``<extra_id_N>``) are matched in the raw text first, and
  characters the vocabulary lacks become one ``<unk>`` per run (the fast tokenizer has no byte fallback, so a
  run of sentencepiece byte pieces ``<0xNN>`` is one ``<unk>``).

Either way the ids of a text are followed by EOS, truncated to ``max_length`` (EOS kept) and right-padded with
the pad id; the mask is 1 on the real tokens (EOS included).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from chronoedit.models.dit.config import TEXT_LEN

_T5_EXTRA_IDS = 100  # sentinel tokens T5TokenizerFast adds to a bare spiece.model


class _Backend(Protocol):
    def encode(self, texts: list[str]) -> list[list[int]]: ...  # ids without special tokens appended
    def token_to_id(self, token: str) -> int | None: ...


class _TokenizersBackend:
    """``tokenizer.json`` run by the ``tokenizers`` library, its own truncation/padding/post-processing off."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.tok = HFTokenizer.from_file(str(path))
        self.tok.no_truncation()
        self.tok.no_padding()

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)


class _SentencePieceBackend:
    """``spiece.model`` run by ``sentencepiece``, made to give ``T5TokenizerFast``'s ids (see module doc)."""

    def __init__(self, path: Path | bytes, added: dict[str, int]) -> None:
        import sentencepiece

        if isinstance(path, bytes):  # the serialised model itself (e.g. embedded in a checkpoint)
            self.sp = sentencepiece.SentencePieceProcessor(model_proto=path)
        else:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.unk_id = self.sp.unk_id()
        self.added = dict(added)
        for i in range(self.sp.get_piece_size()):  # control pieces (<pad>, </s>) and <unk> are matched in text
            if self.sp.is_control(i) or self.sp.is_unknown(i):
                self.added.setdefault(self.sp.id_to_piece(i), i)
        longest_first = sorted(self.added, key=len, reverse=True)
        self.split = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")") if longest_first else None

    def _encode_plain(self, text: str) -> list[int]:
        out: list[int] = []
        in_unknown = False  # inside a run of unknown characters, which the fast tokenizer fuses into one <unk>
        for i in self.sp.encode(text):
            unknown = self.sp.is_byte(i) or i == self.unk_id  # byte pieces only come from byte fallback
            if not unknown:
                out.append(i)
            elif not in_unknown:
                out.append(self.unk_id)
            in_unknown = unknown
        return out

    def _encode_one(self, text: str) -> list[int]:
        parts = self.split.split(text) if self.split is not None else [text]  # odd indices: added tokens
        ids: list[int] = []
        for k, part in enumerate(parts):
            if k % 2:
                ids.append(self.added[part])
            elif part:
                ids.extend(self._encode_plain(part))
        return ids

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [self._encode_one(t) for t in texts]

    def token_to_id(self, token: str) -> int | None:
        if token in self.added:
            return self.added[token]
        i = self.sp.piece_to_id(token)
        return None if i == self.unk_id and token != self.sp.id_to_piece(self.unk_id) else i


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable tokenizer config ({e})") from e


def _token_str(value: object, default: str) -> str:
    """A special token from a tokenizer config: a string, or an AddedToken dict with ``content``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else default


def _added_tokens(config: dict, sp_size: int) -> dict[str, int]:
    """Added tokens of a spiece.model-only folder: tokenizer_config.json's table, else T5's 100 sentinels."""
    table = config.get("added_tokens_decoder")
    if isinstance(table, dict) and table:
        return {_token_str(v, ""): int(k) for k, v in table.items() if _token_str(v, "")}
    n = int(config.get("extra_ids", _T5_EXTRA_IDS))
    return {f"<extra_id_{i}>": sp_size + n - 1 - i for i in range(n)}  # <extra_id_0> is the last id


class Tokenizer:
    """Prompts -> ``(ids, mask)``, each ``(B, max_length)`` int64, as ``T5TokenizerFast`` with
    ``padding="max_length", truncation=True, add_special_tokens=True`` gives them."""

    def __init__(self, backend: _Backend, *, eos_token: str = "</s>", pad_token: str = "<pad>") -> None:
        self.backend = backend
        ids = {name: backend.token_to_id(tok) for name, tok in (("eos", eos_token), ("pad", pad_token))}
        missing = [f"{name} token" for name, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer has no {' or '.join(missing)} ({eos_token!r}, {pad_token!r})")
        self.eos_id: int = ids["eos"]
        self.pad_id: int = ids["pad"]
        self.folder: Path | None = None  # the folder it was read from, if any

    @classmethod
    def from_folder(cls, path: str | os.PathLike) -> Tokenizer:
        """A Hub ``tokenizer/`` folder: ``tokenizer.json`` if present, else ``spiece.model``."""
        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"{path}: no such tokenizer folder")
        config = _read_json(path / "tokenizer_config.json")
        special = {**_read_json(path / "special_tokens_map.json"), **config}
        tokens = dict(
            eos_token=_token_str(special.get("eos_token"), "</s>"),
            pad_token=_token_str(special.get("pad_token"), "<pad>"),
        )
        if (path / "tokenizer.json").is_file():
            tok = cls(_TokenizersBackend(path / "tokenizer.json"), **tokens)
        elif (path / "spiece.model").is_file():
            import sentencepiece

            size = sentencepiece.SentencePieceProcessor(model_file=str(path / "spiece.model")).get_piece_size()
            tok = cls(_SentencePieceBackend(path / "spiece.model", _added_tokens(config, size)), **tokens)
        else:
            raise ValueError(f"{path}: neither tokenizer.json nor spiece.model found")
        tok.folder = path  # where it came from (copied into checkpoints that ship it)
        return tok

    @classmethod
    def from_sentencepiece(cls, model: bytes, *, extra_ids: int = _T5_EXTRA_IDS, what: str = "tokenizer") -> Tokenizer:
        """A tokenizer from the bytes of a ``spiece.model`` (e.g. ComfyUI's ``spiece_model`` tensor), as
        ``T5TokenizerFast`` makes of that file alone: ``extra_ids`` sentinels after its pieces, ``</s>``, ``<pad>``."""
        import sentencepiece

        try:
            size = sentencepiece.SentencePieceProcessor(model_proto=model).get_piece_size()
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"{what}: not a sentencepiece model ({e})") from None
        return cls(_SentencePieceBackend(model, _added_tokens({"extra_ids": extra_ids}, size)))

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, EOS appended, not truncated."""
        return [[*ids, self.eos_id] for ids in self.backend.encode(list(texts))]

    def __call__(self, texts: str | Sequence[str], max_length: int = TEXT_LEN) -> tuple[Tensor, Tensor]:
        """``ids, mask`` (B, max_length): ids + EOS, truncated to max_length (EOS kept), right-padded."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a str or a sequence of str")
        if len(texts) == 0:
            raise ValueError("texts is empty: nothing to tokenize")
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length={max_length!r} must be a positive int")
        ids = torch.full((len(texts), max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), max_length), dtype=torch.long)
        for row, seq in enumerate(self.backend.encode(list(texts))):
            seq = [*seq[: max_length - 1], self.eos_id]  # truncation keeps room for EOS
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        return ids, mask


__all__ = ["Tokenizer"]
