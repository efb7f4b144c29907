"""The interface every tokenizer backend implements.

allllm adds BOS/EOS itself (docs/design.md: tokens, documents, rows), so a backend only maps text to ids
and back: it never adds special tokens, and text that merely looks like a
special token (``<|endoftext|>``) is encoded as ordinary text.

``cut_rule`` tells the tokenize pipeline where a long document may be cut for
parallel encoding without changing a single id; a backend that cannot prove
any cut safe returns None and its documents are encoded whole.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


class CutRule(ABC):
    """Where a text can be split so that encode(a) + encode(b) == encode(a + b)."""

    name: str = "cut-rule"

    @abstractmethod
    def last_cut(self, text: str, lo: int, hi: int) -> int:
        """The largest safe cut position ``p`` with ``lo < p <= hi``, or -1 if there is none.

        Cutting at ``p`` means encoding ``text[:p]`` and ``text[p:]`` separately.
        """


class NewlineLetterCut(CutRule):
    """Cut between ``\\n`` and an ASCII letter, when the character before ``\\n`` is not whitespace.

    Safe for regex pre-tokenizers of the GPT-2 / cl100k / o200k / Llama-3
    families followed by byte-level BPE: every one of them ends a piece at such
    a newline and starts a new one at the letter, whatever surrounds them.
    (Requiring non-whitespace before the newline matters for GPT-2's
    ``\\s+(?!\\S)``, which splits runs of whitespace differently at the end of a
    string.)
    """

    name = "newline-letter"

    def last_cut(self, text: str, lo: int, hi: int) -> int:
        hi = min(hi, len(text) - 1)
        while True:
            nl = text.rfind("\n", lo, hi)
            if nl < 0:
                return -1
            after, before = text[nl + 1], text[nl - 1] if nl else " "
            if after.isascii() and after.isalpha() and not before.isspace():
                return nl + 1
            hi = nl


class TokenizerBackend(ABC):
    """One tokenizer library behind allllm's interface. Instances are thread-safe for encoding."""

    #: registry name (``tokenizer.backend`` in the config)
    backend: str = ""
    #: True when several threads may each run a one-thread ``encode_batch`` at once and scale
    #: (the work releases the GIL). The tokenize pipeline then encodes several batches
    #: concurrently instead of one batch on all threads, which leaves no core idle at the end
    #: of each batch.
    concurrent_batches: bool = False

    @property
    @abstractmethod
    def path(self) -> str | None:
        """The config's ``tokenizer.path`` (None for the byte tokenizer)."""

    @abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text, no special tokens added, using the backend's parallel batch API."""

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        """``encode_batch`` as uint32 arrays; backends that can skip Python lists override it."""
        import numpy as np

        return [np.array(ids, dtype=np.uint32) for ids in self.encode_batch(texts)]

    def encode_joined(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """All texts' ids as one uint32 array and each text's id count, from one encoder call.

        For many short texts (``line`` documents) one call over the joined texts
        costs a fraction of one call per text. Only a backend that can prove the
        result equals encoding each text alone implements it; ``None`` means "not
        here, not for these texts": the caller falls back to ``encode_batch``.
        """
        return None

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (special tokens dropped)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """The id range: every id this tokenizer can produce is below it (special tokens included)."""

    # Special ids: a backend sets ``_bos`` / ``_eos`` / ``_pad`` when it loads (None: absent).
    _bos: int | None = None
    _eos: int | None = None
    _pad: int | None = None

    @property
    def bos_id(self) -> int | None:
        return self._bos

    @property
    def eos_id(self) -> int | None:
        return self._eos

    @property
    def pad_id(self) -> int | None:
        return self._pad

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """sha256 hex of everything that decides the ids; equal across processes and machines."""

    @property
    def cut_rule(self) -> CutRule | None:
        """Where long documents may be cut for parallel encoding (None: never cut)."""
        return None

    def set_num_threads(self, n: int) -> None:  # noqa: B027 - optional hook
        """Threads the backend may use in ``encode_batch`` (default: all cores)."""

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "path": self.path,
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "fingerprint": self.fingerprint,
            "cut_rule": self.cut_rule.name if self.cut_rule else None,
        }
