"""Which tokenizers may have a long document cut for parallel encoding, and where.

Cutting changes ids unless the pre-tokenizer provably starts a new piece at the
cut (docs/design.md: tokens, documents, rows). ``NewlineLetterCut`` is safe for the regex pre-tokenizers
of the GPT-2 / cl100k / o200k / Llama-3 families followed by byte-level BPE,
so a tokenizer gets it only when its pattern is one of those, compared as a
string: an unknown pattern gets no cut rule (documents are encoded whole),
which is slower but never wrong. tests/test_tokenizers.py proves each pattern
listed here on adversarial random text and on real prose.
"""

from __future__ import annotations

from typing import Any

from allllm.tokenizer.base import CutRule, NewlineLetterCut

# GPT-2 as released (also the HF ByteLevel pre-tokenizer's built-in regex).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# tiktoken's faster equivalent of GPT-2's (gpt2, r50k_base, p50k_base, p50k_edit).
R50K_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
# cl100k_base as tiktoken >= 0.7 writes it (possessive quantifiers).
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
# cl100k_base as first published; Llama-3 ships the same regex in its tokenizer.json.
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Qwen2 / Qwen2.5: Llama-3's regex with single digits.
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

#: pre-tokenizer regexes after which a cut between ``\n`` and an ASCII letter is safe
NEWLINE_LETTER_SAFE_PATTERNS: dict[str, str] = {
    "gpt2": GPT2_PATTERN,
    "r50k": R50K_PATTERN,
    "cl100k": CL100K_PATTERN,
    "llama3": LLAMA3_PATTERN,
    "qwen2": QWEN2_PATTERN,
    "o200k": O200K_PATTERN,
}
_SAFE = frozenset(NEWLINE_LETTER_SAFE_PATTERNS.values())

_SAFE_NORMALIZERS = frozenset({"NFC", "NFKC"})


class AnyPositionCut(CutRule):
    """Cut anywhere: for tokenizers that map each character on its own (the byte tokenizer)."""

    name = "any-position"

    def last_cut(self, text: str, lo: int, hi: int) -> int:
        p = min(hi, len(text) - 1)
        return p if p > lo else -1


def tiktoken_cut_rule(pattern: str) -> CutRule | None:
    """NewlineLetterCut for a known safe pattern (byte-level BPE is implied by tiktoken)."""
    return NewlineLetterCut() if pattern in _SAFE else None


def hf_cut_rule(spec: dict[str, Any]) -> CutRule | None:
    """NewlineLetterCut when a ``tokenizer.json`` (parsed) provably ends a piece at each cut.

    Needs: a BPE model without dropout; no normalizer, or NFC/NFKC (neither
    joins a newline to a letter); a pre-tokenizer that is ByteLevel with the
    GPT-2 regex and no prefix space, or a Sequence of known-regex Splits (and
    Digits) ending in such a ByteLevel; and no ordinary added token that could
    match across the cut (one holding a newline, or one that strips to its left).
    """
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout"):
        return None
    if not _normalizer_is_safe(spec.get("normalizer")):
        return None
    if not _pre_tokenizer_is_safe(spec.get("pre_tokenizer")):
        return None
    for added in spec.get("added_tokens") or []:
        if added.get("special"):
            continue  # never matched: allllm encodes special-looking text as ordinary text
        content = added.get("content", "")
        if "\n" in content or "\r" in content or added.get("lstrip"):
            return None
    return NewlineLetterCut()


def _normalizer_is_safe(norm: dict[str, Any] | None) -> bool:
    if norm is None:
        return True
    if norm.get("type") == "Sequence":
        return all(_normalizer_is_safe(n) for n in norm.get("normalizers") or [])
    return norm.get("type") in _SAFE_NORMALIZERS


def _pre_tokenizer_is_safe(pre: dict[str, Any] | None) -> bool:
    if pre is None:
        return False
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    if not steps:
        return False
    *head, last = steps
    if last.get("type") != "ByteLevel" or last.get("add_prefix_space", True):
        return False
    splits_by_regex = bool(last.get("use_regex", True))
    for step in head:
        kind = step.get("type")
        if kind == "Digits":
            continue
        if kind != "Split" or step.get("behavior") != "Isolated" or step.get("invert"):
            return False
        pattern = step.get("pattern") or {}
        if pattern.get("Regex") not in _SAFE:
            return False
        splits_by_regex = True
    return splits_by_regex
