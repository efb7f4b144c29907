"""Small helpers every backend shares: fingerprint framing, special-token lookup, thread count.

Kept apart from the backends so that each backend module holds only the code
for its own library, and free of heavy imports so any backend may use it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable

from allllm.errors import TokenizerError

#: bumped only if the framing below changes (it would change every fingerprint)
FINGERPRINT_VERSION = b"allllm-tokenizer-fingerprint-v1"

# Names that mean "beginning / end of a document" or "padding" in widely used
# vocabularies, tried in order when the tokenizer itself does not say which
# token plays the role (a bare tokenizer.json, a .tiktoken file).
WELL_KNOWN_BOS = ("<|begin_of_text|>", "<|startoftext|>", "<s>", "<bos>", "<|bos|>")
WELL_KNOWN_EOS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
WELL_KNOWN_PAD = ("<pad>", "<|pad|>", "[PAD]", "<|padding|>", "<|finetune_right_pad_id|>")

WELL_KNOWN = {"bos": WELL_KNOWN_BOS, "eos": WELL_KNOWN_EOS, "pad": WELL_KNOWN_PAD}


def fingerprint_of(backend: str, parts: Iterable[bytes]) -> str:
    """sha256 hex over the backend name and length-prefixed ``parts``.

    Length prefixes keep two different part lists from ever hashing the same
    bytes (``["ab", "c"]`` vs ``["a", "bc"]``).
    """
    h = hashlib.sha256()
    h.update(FINGERPRINT_VERSION + b"\0" + backend.encode() + b"\0")
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def first_present(names: Iterable[str], lookup: Callable[[str], int | None]) -> int | None:
    """The id of the first token in ``names`` the vocabulary has, else None."""
    for name in names:
        idx = lookup(name)
        if idx is not None:
            return idx
    return None


def override_id(
    role: str, token: str, lookup: Callable[[str], int | None], where: str | None
) -> int:
    """The id of ``token`` set by ``tokenizer.<role>_token``; a token the vocabulary lacks is an error."""
    idx = lookup(token)
    if idx is None:
        raise TokenizerError(
            f"tokenizer.{role}_token {token!r} is not a token of {where or 'the tokenizer'}",
            f"give a token string the tokenizer has, or remove tokenizer.{role}_token",
        )
    return idx


def default_num_threads() -> int:
    """The cores this process may run on (respects CPU affinity / container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
