"""The built-in byte tokenizer: UTF-8 bytes as ids 0-255, plus BOS, EOS and PAD.

Needs no files and no network, so it is the offline default. Every character
maps to its own bytes, so a document may be cut at any character boundary.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from allllm.config import TokenizerConfig
from allllm.errors import TokenizerError
from allllm.tokenizer._shared import fingerprint_of
from allllm.tokenizer.base import CutRule, TokenizerBackend
from allllm.tokenizer.cutting import AnyPositionCut

BOS_ID = 256
EOS_ID = 257
PAD_ID = 258
VOCAB_SIZE = 259

# Changing anything above (or how text becomes bytes) must change this string.
_VERSION = b"byte-utf8-v1 bos=256 eos=257 pad=258"


class ByteTokenizer(TokenizerBackend):
    """UTF-8 bytes; lone surrogates (never produced by allllm's readers) become ``?``."""

    backend = "byte"

    def __init__(self, cfg: TokenizerConfig | None = None) -> None:
        if cfg is not None and (cfg.bos_token or cfg.eos_token or cfg.pad_token):
            raise TokenizerError(
                "the byte tokenizer has fixed special ids (BOS 256, EOS 257, PAD 258)",
                "remove tokenizer.bos_token / eos_token / pad_token",
            )
        self._cut_rule = AnyPositionCut()

    @property
    def path(self) -> str | None:
        return None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # list(bytes) builds the int list in C; measured faster than numpy's frombuffer().tolist()
        return [list(t.encode("utf-8", "replace")) for t in texts]

    def encode_batch_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        # the bytes are the ids: no Python ints at all
        return [
            np.frombuffer(t.encode("utf-8", "replace"), dtype=np.uint8).astype(np.uint32)
            for t in texts
        ]

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8", "replace"))

    def decode(self, ids: Sequence[int]) -> str:
        if not isinstance(ids, (list, tuple)):
            ids = [int(i) for i in ids]  # bytes(ndarray) would copy the array's raw buffer
        try:
            data = bytes(ids)
        except ValueError:  # special ids (>= 256) present: drop them
            data = bytes(i for i in ids if 0 <= i < 256)
        return data.decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.backend, [_VERSION])

    @property
    def cut_rule(self) -> CutRule:
        return self._cut_rule
