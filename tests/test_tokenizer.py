"""Tokenizer and prompt-cleaning parity with the reference (transformers' T5TokenizerFast, diffusers' cleaning).

The tokenizer is a sentencepiece unigram model trained in the test (byte fallback on, UMT5's special ids), saved
as a Hub folder; both our backends (tokenizer.json via `tokenizers`, spiece.model via `sentencepiece`) must give
T5TokenizerFast's ids and mask, token for token, on every string of PARITY_STRINGS.
"""

from __future__ import annotations

import html
import shutil
import sys

import pytest
import torch

from chronoedit.models.text import Tokenizer, clean_prompt
from chronoedit.models.text.prompt import _WHITESPACE, whitespace_clean
from chronoedit.models.text.tokenizer import _SentencePieceBackend, _TokenizersBackend
from tests.fixtures_text import PARITY_STRINGS, make_test_tokenizer_folder

transformers = pytest.importorskip("transformers")

LAYOUTS = {  # folder layout -> backend it must select
    "tokenizer.json": _TokenizersBackend,  # the Hub folder as saved: tokenizer.json wins
    "spiece.model": _SentencePieceBackend,  # nothing but the sentencepiece model
    "spiece.model+config": _SentencePieceBackend,  # plus tokenizer_config.json
}


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    return make_test_tokenizer_folder(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def reference(hub_folder):
    return transformers.T5TokenizerFast.from_pretrained(str(hub_folder))


@pytest.fixture(scope="module")
def folders(hub_folder, tmp_path_factory):
    out = {"tokenizer.json": hub_folder}
    copies = {"spiece.model": ["spiece.model"], "spiece.model+config": ["spiece.model", "tokenizer_config.json"]}
    for layout, files in copies.items():
        folder = tmp_path_factory.mktemp(layout.replace("+", "_"))
        for f in files:
            shutil.copy(hub_folder / f, folder / f)
        out[layout] = folder
    return out


def ref_call(reference, texts, max_length):
    enc = reference(
        texts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
        return_attention_mask=True, return_tensors="pt",
    )  # fmt: skip
    return enc.input_ids, enc.attention_mask


@pytest.mark.parametrize("max_length", [512, 16])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_ids_and_mask_match_t5_tokenizer_fast(folders, reference, layout, max_length):
    tok = Tokenizer.from_folder(folders[layout])
    assert isinstance(tok.backend, LAYOUTS[layout])
    want_ids, want_mask = ref_call(reference, PARITY_STRINGS, max_length)
    ids, mask = tok(PARITY_STRINGS, max_length=max_length)
    assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape == (len(PARITY_STRINGS), max_length)
    wrong = [
        f"{s[:30]!r}: ours {ids[i][mask[i] == 1].tolist()[:20]} ref {want_ids[i][want_mask[i] == 1].tolist()[:20]}"
        for i, s in enumerate(PARITY_STRINGS)
        if not (torch.equal(ids[i], want_ids[i]) and torch.equal(mask[i], want_mask[i]))
    ]
    assert not wrong, f"{len(wrong)} of {len(PARITY_STRINGS)} strings differ:\n" + "\n".join(wrong)


def test_parity_strings_exercise_the_hard_cases(reference):
    """The parity test is only as good as its strings: check they hit truncation, <unk>, literal special
    tokens, sentinels and the empty prompt (a vacuous test could pass with a broken tokenizer)."""
    assert len(PARITY_STRINGS) >= 50
    ids, mask = ref_call(reference, PARITY_STRINGS, 512)
    lengths = mask.sum(1)
    unk, eos = reference.unk_token_id, reference.eos_token_id
    assert (unk, eos, reference.pad_token_id) == (2, 1, 0)  # UMT5's ids
    assert (lengths == 512).sum() >= 3  # truncated prompts
    assert (lengths == 1).any()  # the empty prompt: EOS only
    assert sum(unk in row.tolist() for row in ids) >= 5  # characters outside the vocabulary (byte-fallback case)
    assert any(eos in row[: n - 1].tolist() for row, n in zip(ids, lengths))  # a literal </s> mid-prompt
    assert any(i >= len(reference) - 100 for row in ids for i in row.tolist())  # <extra_id_N> sentinels
    assert (ids[lengths < 512, -1] == 0).all() and (ids[torch.arange(len(ids)), lengths - 1] == eos).all()


def test_empty_prompt_and_single_string(folders):
    tok = Tokenizer.from_folder(folders["tokenizer.json"])
    ids, mask = tok("", max_length=8)
    assert ids.tolist() == [[1, 0, 0, 0, 0, 0, 0, 0]] and mask.tolist() == [[1, 0, 0, 0, 0, 0, 0, 0]]
    ids, _ = tok(["a photo of the cat"], max_length=2)  # truncation keeps EOS
    assert ids[0, 1].item() == 1 and tok.encode(["a photo"])[0][-1] == 1


def test_bad_input_is_a_clear_error(folders, tmp_path):
    with pytest.raises(ValueError, match="no such tokenizer folder"):
        Tokenizer.from_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"neither tokenizer\.json nor spiece\.model"):
        Tokenizer.from_folder(tmp_path)
    tok = Tokenizer.from_folder(folders["spiece.model"])
    with pytest.raises(ValueError, match="empty"):
        tok([])
    with pytest.raises(ValueError, match="sequence of str"):
        tok(["ok", 3])
    with pytest.raises(ValueError, match="max_length"):
        tok(["ok"], max_length=0)


# ---------------------------------------------------------------------------------------------- prompt cleaning

CLEANING_STRINGS = [
    "  A photo   of a cat  ",
    "Tom &amp; Jerry",
    "&amp;amp;lt; twice &amp;quot;escaped&amp;quot;",
    "&lt;b&gt;bold&lt;/b&gt; &#39;x&#39; &#x4E2D;",
    "tabs\tnew\nlines\r\nand\x0bvt\x0cff",
    "nbsp\u00a0ideo\u3000thin\u2009narrow\u202fline\u2028para\u2029",
    "\x1cfile\x1dgroup\x1erecord\x1funit\x1c",  # isspace() but not Unicode White_Space
    "zero\u200bwidth stays",
    "mojibake: cafÃ© naÃ¯ve â€œquotedâ€\x9d",
    "ｆｕｌｌｗｉｄｔｈ",
    "emoji 🐱 and CJK 一只猫",
    "",
    "   ",
]


def test_whitespace_class_is_unicode_white_space():
    """Our stdlib pattern matches exactly what `\\s` matches in the `regex` module (used by the reference)."""
    regex = pytest.importorskip("regex")
    ref = regex.compile(r"\s")
    differ = [hex(c) for c in range(sys.maxunicode + 1) if bool(ref.match(chr(c))) != bool(_WHITESPACE.match(chr(c)))]
    assert not differ, f"whitespace differs from regex's \\s at {differ}"


def test_clean_prompt_matches_diffusers():
    pytest.importorskip("ftfy")  # the reference cannot clean without it
    from diffusers.pipelines.chronoedit.pipeline_chronoedit import prompt_clean

    for s in CLEANING_STRINGS:
        assert clean_prompt(s) == prompt_clean(s), repr(s)
    assert clean_prompt("cafÃ©") == "café"  # ftfy really ran


def test_clean_prompt_without_unicode_fixing_matches_diffusers_steps():
    """The no-ftfy path: the reference's html/whitespace steps alone, ftfy's repair left out."""
    from diffusers.pipelines.chronoedit.pipeline_chronoedit import whitespace_clean as ref_whitespace_clean

    for s in CLEANING_STRINGS:
        want = ref_whitespace_clean(html.unescape(html.unescape(s)).strip())
        assert clean_prompt(s, fix_unicode=False) == want == whitespace_clean(html.unescape(html.unescape(s))), s
    assert clean_prompt("cafÃ©", fix_unicode=False) == "cafÃ©"
    with pytest.raises(ValueError, match="must be a str"):
        clean_prompt(None)
