"""The tokenizer the rest of allllm talks to: a backend from the registry plus the config's BOS/EOS policy.

Backends are listed once, in ``BACKENDS``, as ``module:Class`` strings and
imported only when chosen, so importing this module pulls in no tokenizer
library. A new backend is one module and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from allllm.errors import TokenizerError
from allllm.tokenizer.base import CutRule, TokenizerBackend

if TYPE_CHECKING:
    import numpy as np

    from allllm.config import Config, TokenizerConfig

BACKENDS: dict[str, str] = {
    "hf": "allllm.tokenizer.hf:HFTokenizer",
    "sentencepiece": "allllm.tokenizer.sentencepiece_backend:SentencePieceTokenizer",
    "tiktoken": "allllm.tokenizer.tiktoken_backend:TiktokenTokenizer",
    "byte": "allllm.tokenizer.byte:ByteTokenizer",
}


def backend_class(name: str) -> type[TokenizerBackend]:
    """Import and return the backend class registered as ``name``."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise TokenizerError(
            f"unknown tokenizer backend {name!r}", f"use one of {', '.join(BACKENDS)}"
        ) from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


class TokenizerManager:
    """A loaded backend and whether each document gets BOS / EOS (``tokenizer.add_bos/add_eos``)."""

    def __init__(self, backend: TokenizerBackend, add_bos: bool = False, add_eos: bool = True):
        self.backend = backend
        self.add_bos = add_bos
        self.add_eos = add_eos

    @classmethod
    def from_config(
        cls, tok_cfg: TokenizerConfig, num_threads: int | None = None
    ) -> TokenizerManager:
        """Load the configured backend; ``num_threads`` bounds its batch encoding (default: all cores)."""
        backend = backend_class(tok_cfg.backend)(tok_cfg)
        if num_threads is not None:
            backend.set_num_threads(num_threads)
        return cls(backend, add_bos=tok_cfg.add_bos, add_eos=tok_cfg.add_eos)

    # -- the backend interface, by delegation ----------------------------------------------------
    @property
    def backend_name(self) -> str:
        return self.backend.backend

    @property
    def path(self) -> str | None:
        return self.backend.path

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text; no special tokens (those come from ``special_ids_for_document``)."""
        return self.backend.encode_batch(texts)

    def encode_batch_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        """``encode_batch`` as uint32 arrays (the tokenize pipeline's fast path)."""
        return self.backend.encode_batch_arrays(texts)

    def encode_joined(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """One call for many texts (flat ids, count per text), or None where the backend can't."""
        return self.backend.encode_joined(texts)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with special tokens dropped; an id outside the id range is an error."""
        if len(ids):
            lo, hi = min(ids), max(ids)
            if lo < 0 or hi >= self.vocab_size:
                bad = lo if lo < 0 else hi
                raise TokenizerError(
                    f"id {bad} is outside this tokenizer's id range 0..{self.vocab_size - 1}",
                    "decode ids made by the same tokenizer (compare fingerprints)",
                )
        return self.backend.decode(ids)

    @property
    def vocab_size(self) -> int:
        return self.backend.vocab_size

    @property
    def id_range(self) -> int:
        """Every id is below this: the number of embedding rows the tokenizer needs."""
        return self.backend.vocab_size

    @property
    def bos_id(self) -> int | None:
        return self.backend.bos_id

    @property
    def eos_id(self) -> int | None:
        return self.backend.eos_id

    @property
    def pad_id(self) -> int | None:
        return self.backend.pad_id

    @property
    def fingerprint(self) -> str:
        return self.backend.fingerprint

    @property
    def cut_rule(self) -> CutRule | None:
        return self.backend.cut_rule

    def set_num_threads(self, n: int) -> None:
        self.backend.set_num_threads(n)

    @property
    def concurrent_batches(self) -> bool:
        """Whether batches scale when encoded concurrently, one thread each (see the backend)."""
        return self.backend.concurrent_batches

    def describe(self) -> dict[str, Any]:
        """What meta files and ``status`` record about the tokenizer."""
        return {**self.backend.describe(), "add_bos": self.add_bos, "add_eos": self.add_eos}

    # -- the document policy ---------------------------------------------------------------------
    def special_ids_for_document(self) -> tuple[int | None, int | None]:
        """(BOS or None, EOS or None) to put around every document, as the config asks."""
        bos = eos = None
        if self.add_bos:
            bos = self.bos_id
            if bos is None:
                raise TokenizerError(
                    f"tokenizer.add_bos is true but {self._name()} has no BOS token",
                    "set tokenizer.bos_token or add_bos=false",
                )
        if self.add_eos:
            eos = self.eos_id
            if eos is None:
                raise TokenizerError(
                    f"tokenizer.add_eos is true but {self._name()} has no EOS token",
                    "set tokenizer.eos_token or add_eos=false",
                )
        return bos, eos

    def check_vocab(self, model_vocab_size: int) -> None:
        """Refuse a tokenizer whose ids do not all fit the model's embedding."""
        if self.vocab_size > model_vocab_size:
            raise TokenizerError(
                f"{self._name()} uses ids up to {self.vocab_size - 1} but model.vocab_size is "
                f"{model_vocab_size}",
                f"set model.vocab_size to at least {self.vocab_size} (a multiple of 64 is "
                "fastest) or use a tokenizer with fewer tokens",
            )

    def _name(self) -> str:
        return f"the {self.backend_name} tokenizer" + (f" {self.path}" if self.path else "")


def load_tokenizer(cfg: Config, num_threads: int | None = None) -> TokenizerManager:
    """The tokenizer of a whole run config."""
    return TokenizerManager.from_config(cfg.tokenizer, num_threads=num_threads)
