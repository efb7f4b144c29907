"""Which rows are validation rows (docs/design.md: validation rows) — a formula fixed forever.

Row ``r`` of the shard ``shard_id`` is a validation row iff ``u(seed, shard_id, r) < val_fraction``
where ``u`` is computed exactly like this (all arithmetic modulo 2**64 on unsigned 64-bit ints)::

    key = int.from_bytes(sha256(f"{seed}:{shard_id}".encode("utf-8")).digest()[:8], "little")
    x   = key + r * 0x9E3779B97F4A7C15
    x   = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9     # the splitmix64 finaliser
    x   = (x ^ (x >> 27)) * 0x94D049BB133111EB
    x   =  x ^ (x >> 31)
    u   = (x >> 11) / 2**53                        # a double in [0, 1)

One exception keeps every non-empty shard trainable: when *every* row of a shard would be a
validation row, the row with the largest ``u`` (the lowest index among equal ones) is a training
row instead. So a 1-row shard is always trained on.

Why this shape: the split must be recomputable by ``eval`` and ``train`` on any machine, for any
world size, years later, without storing per-row lists — so it depends only on the seed, the
shard's content id and the row number, uses integer arithmetic that numpy performs identically on
every platform, and is vectorized (tens of millions of rows a second).
"""

from __future__ import annotations

import hashlib

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_CHUNK = 1 << 20  # rows hashed at a time: bounds temporary memory for huge shards


def shard_key(seed: int, shard_id: str) -> int:
    """The per-(seed, shard) 64-bit key: first 8 bytes of sha256(f"{seed}:{shard_id}"), little-endian."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{shard_id}".encode()).digest()[:8], "little")


def _mix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def row_uniforms(seed: int, shard_id: str, rows: np.ndarray | int) -> np.ndarray:
    """``u(seed, shard_id, r)`` for each row number in ``rows`` (or for ``range(rows)``) as float64."""
    r = np.arange(rows, dtype=np.uint64) if isinstance(rows, int) else np.asarray(rows, np.uint64)
    key = np.uint64(shard_key(seed, shard_id))
    out = np.empty(r.shape, dtype=np.float64)
    flat_r, flat_out = r.reshape(-1), out.reshape(-1)
    for lo in range(0, flat_r.size, _CHUNK):
        with np.errstate(over="ignore"):
            x = key + flat_r[lo : lo + _CHUNK] * GOLDEN
        flat_out[lo : lo + _CHUNK] = (_mix(x) >> np.uint64(11)).astype(np.float64) / 2.0**53
    return out


def validation_mask(seed: int, shard_id: str, n_rows: int, val_fraction: float) -> np.ndarray:
    """Boolean mask over the shard's rows: True marks a validation row (never trained on)."""
    if n_rows <= 0:
        return np.zeros(0, dtype=bool)
    if val_fraction <= 0.0:
        return np.zeros(n_rows, dtype=bool)
    u = row_uniforms(seed, shard_id, n_rows)
    mask = u < val_fraction
    if mask.all():
        mask[int(np.argmax(u))] = False  # keep one training row (largest u; lowest index on ties)
    return mask


def split_rows(
    seed: int, shard_id: str, n_rows: int, val_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of one shard as sorted int64 row numbers."""
    mask = validation_mask(seed, shard_id, n_rows, val_fraction)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def count_validation_rows(seed: int, shard_id: str, n_rows: int, val_fraction: float) -> int:
    """How many rows of the shard are validation rows."""
    return int(validation_mask(seed, shard_id, n_rows, val_fraction).sum())


def split_sizes(
    seed: int, shard_id: str, n_rows: int, seq_len: int, last_row_len: int, val_fraction: float
) -> tuple[int, int, int, int]:
    """(training rows, training tokens, validation rows, validation tokens) of one shard.

    Every row holds ``seq_len`` ids except the final one (``last_row_len``).
    """
    mask = validation_mask(seed, shard_id, n_rows, val_fraction)
    val_rows = int(mask.sum())
    val_tokens = val_rows * seq_len
    if n_rows and mask[-1]:
        val_tokens -= seq_len - last_row_len
    total_tokens = (n_rows - 1) * seq_len + last_row_len if n_rows else 0
    return n_rows - val_rows, total_tokens - val_tokens, val_rows, val_tokens
