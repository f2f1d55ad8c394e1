"""Declarative key maps: a table of ``(source pattern, target pattern)`` pairs.

Patterns are key names with placeholders: ``{n}`` a layer index (digits), ``{p}`` a parameter suffix
(``weight`` or ``bias``). Each placeholder captured on one side is written into the other. A map converts a
state dict completely or raises naming every key it could not place; ``inverse()`` maps back.

    DIT = KeyMap([("blocks.{n}.attn1.to_q.{p}", "blocks.{n}.self_attn.q.{p}"), ...])
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TypeVar

from chronoedit.checkpoint.errors import CheckpointError, name_some

T = TypeVar("T")

PLACEHOLDERS = {"n": r"\d+", "m": r"\d+", "p": r"weight|bias"}


def _compile(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", pattern)
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            out.append(re.escape(part))
        elif part not in PLACEHOLDERS:
            raise ValueError(f"unknown placeholder {{{part}}} in key pattern {pattern!r}")
        else:
            out.append(f"(?P<{part}>{PLACEHOLDERS[part]})")
    return re.compile("".join(out))


class KeyMap:
    """A bijective renaming of checkpoint keys, plus source keys that are known and dropped (``ignore``)."""

    def __init__(self, rules: Iterable[tuple[str, str]], ignore: Iterable[str] = ()) -> None:
        self.rules = list(rules)
        self.ignore = list(ignore)
        self._compiled = [(_compile(src), dst) for src, dst in self.rules]
        self._ignored = [_compile(p) for p in self.ignore]
        for src, dst in self.rules:
            if set(re.findall(r"\{(\w+)\}", src)) != set(re.findall(r"\{(\w+)\}", dst)):
                raise ValueError(f"key rule {src!r} -> {dst!r} has different placeholders on each side")

    def map_key(self, key: str) -> str | None:
        """The target name of ``key``; None if it is ignored; KeyError if no rule matches."""
        for regex, dst in self._compiled:
            m = regex.fullmatch(key)
            if m:
                return dst.format(**m.groupdict())
        if any(r.fullmatch(key) for r in self._ignored):
            return None
        raise KeyError(key)

    def convert(self, state: Mapping[str, T], what: str = "checkpoint") -> dict[str, T]:
        """Rename every key of ``state``; keys no rule knows are all named in one CheckpointError."""
        out: dict[str, T] = {}
        unknown: list[str] = []
        for key, value in state.items():
            try:
                new = self.map_key(key)
            except KeyError:
                unknown.append(key)
                continue
            if new is not None:
                if new in out:
                    raise CheckpointError(f"{what}: two keys map to {new!r}")
                out[new] = value
        if unknown:
            raise CheckpointError(f"{what}: {len(unknown)} keys not in the key map: {name_some(unknown)}")
        return out

    def rename(self, keys: Iterable[str], what: str = "checkpoint") -> dict[str, str]:
        """{target: source} for ``keys`` (ignored keys dropped); unknown keys raise as in :meth:`convert`."""
        return {v: k for k, v in self.convert({k: k for k in keys}, what).items()}

    def inverse(self) -> KeyMap:
        return KeyMap([(dst, src) for src, dst in self.rules])

    def matches(self, keys: Iterable[str]) -> float:
        """Fraction of ``keys`` this map knows (used to detect a checkpoint's format)."""
        keys = list(keys)
        if not keys:
            return 0.0
        known = 0
        for k in keys:
            try:
                self.map_key(k)
                known += 1
            except KeyError:
                pass
        return known / len(keys)
