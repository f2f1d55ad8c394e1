"""Prompt cleaning, as the reference ChronoEdit pipeline does it before tokenising.

``clean_prompt(text)`` = collapse whitespace(strip(html.unescape(html.unescape(ftfy.fix_text(text))))).

``ftfy`` is an optional extra (``pip install chronoedit[text]``): when it is importable its ``fix_text`` repairs
mojibake and odd unicode first, exactly as diffusers does; when it is not, that step is skipped (logged once) and
the rest is unchanged. Whitespace is the Unicode ``White_Space`` property — what ``\\s`` means in the ``regex``
module the reference uses (the stdlib's ``\\s`` also matches the separators U+001C–U+001F, so it is spelled out).
"""

from __future__ import annotations

import functools
import html
import logging
import re
from collections.abc import Callable

logger = logging.getLogger(__name__)

# Unicode White_Space (= `regex`'s \s): TAB..CR, space, NEL, NBSP, ogham space, U+2000–U+200A, line/paragraph
# separators, narrow NBSP, medium math space, ideographic space.
_WHITESPACE = re.compile("[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")


@functools.cache
def _ftfy_fix_text() -> Callable[[str], str] | None:
    """``ftfy.fix_text`` if the optional package is installed (looked up once), else None (warned once)."""
    try:
        import ftfy  # optional extra, not a runtime dependency
    except ImportError:
        logger.warning("ftfy is not installed: prompts are cleaned without unicode repair (pip install ftfy)")
        return None
    return ftfy.fix_text


def whitespace_clean(text: str) -> str:
    """Every run of whitespace becomes one space; leading and trailing whitespace is removed."""
    return _WHITESPACE.sub(" ", text).strip()


def clean_prompt(text: str, *, fix_unicode: bool = True) -> str:
    """The prompt as the reference pipeline feeds it to the tokenizer.

    ``fix_unicode`` applies ``ftfy.fix_text`` when ftfy is installed (skipped otherwise, or when False).
    """
    if not isinstance(text, str):
        raise ValueError(f"a prompt must be a str, got {type(text).__name__}")
    fix = _ftfy_fix_text() if fix_unicode else None
    if fix is not None:
        text = fix(text)
    text = html.unescape(html.unescape(text)).strip()
    return whitespace_clean(text)


__all__ = ["clean_prompt", "whitespace_clean"]
