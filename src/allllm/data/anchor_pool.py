"""The anchor pool: rows of ``data.anchor`` shards drawn without replacement across runs.

Each run asks the pool for some rows (``train.anchor_fraction`` of the run). No
(shard, row) repeats until every row of the pool has been drawn once — a *pass*
— and then a fresh, reshuffled pass begins. The pool lives in every checkpoint's
trainer state as plain JSON, so it must stay small whatever the corpus: never a
list of drawn rows, only

- ``seed``: the base seed (from ``train.seed``),
- ``pass_index`` and ``cursor``: the current pass and how many of its rows are drawn,
- ``blocks``: the pass as a few blocks, each the pool's composition (sorted
  ``(shard_id, n_rows)``) when it began, its start cursor and its seed.

Block 0 of a pass is a seeded permutation of every row of its pool. When the pool
changes mid-pass (anchor shards added or deleted), a new block begins at the
cursor: the previous block's undrawn rows of shards still present plus every row
of the new shards, shuffled with the block's own seed; rows of removed shards are
dropped. A draw regenerates the orders from the seeds (block by block), so the
same state always draws the same rows: a resumed or re-planned run is exact.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from allllm.errors import DataError

#: (shard_id, n_rows), sorted by shard_id, unique ids
PoolShards = list[tuple[str, int]]
_ROW_BITS = 40  # a row is encoded as (shard index << 40) | row: 10^12 rows a shard


def normalise(shards: PoolShards) -> PoolShards:
    """Sorted, one entry per id, zero-row shards left out."""
    return sorted({(str(s), int(n)) for s, n in shards if int(n) > 0})


def _seed(seed: int, pass_index: int, block: int) -> int:
    digest = hashlib.sha256(f"anchor:{seed}:{pass_index}:{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _shuffle(rows: np.ndarray, seed: int) -> np.ndarray:
    return rows[np.random.Generator(np.random.PCG64(seed)).permutation(rows.size)]


@dataclass
class PoolBlock:
    """Part of a pass: the pool when it began, the cursor it began at, its shuffle's seed."""

    start: int
    seed: int
    shards: PoolShards


@dataclass
class AnchorPool:
    """Where the anchor pool stands (see the module doc)."""

    seed: int
    pass_index: int = 0
    cursor: int = 0
    blocks: list[PoolBlock] = field(default_factory=list)

    @classmethod
    def fresh(cls, seed: int) -> AnchorPool:
        return cls(seed=int(seed))

    # -- the stored form -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "pass_index": self.pass_index,
            "cursor": self.cursor,
            "blocks": [
                {"start": b.start, "seed": b.seed, "shards": [[s, n] for s, n in b.shards]}
                for b in self.blocks
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, seed: int) -> AnchorPool:
        """The stored pool (None: a fresh one of ``seed``); malformed: a one-line DataError."""
        if data is None:
            return cls.fresh(seed)
        try:
            blocks = [
                PoolBlock(
                    _int(b["start"]),
                    _int(b["seed"]),
                    [(_str(s), _int(n)) for s, n in b["shards"]],
                )
                for b in data["blocks"]
            ]
            pool = cls(_int(data["seed"]), _int(data["pass_index"]), _int(data["cursor"]), blocks)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"checkpoint anchor pool is malformed ({exc!r})") from None
        if pool.cursor < 0 or any(b.start > pool.cursor for b in blocks):
            raise DataError("checkpoint anchor pool is malformed (cursor before a block)")
        return pool

    # -- drawing ---------------------------------------------------------------------------------
    def pass_rows(self) -> int:
        """Rows in the current pass (0 before the first draw)."""
        if not self.blocks:
            return 0
        return self.blocks[-1].start + int(self._order().size)

    def remaining(self, shards: PoolShards) -> int:
        """Rows left in the current pass if ``shards`` were drawn from now."""
        shards = normalise(shards)
        if not self.blocks:
            return sum(n for _, n in shards)
        pool = self if shards == self.blocks[-1].shards else self._changed(shards)
        return pool.pass_rows() - pool.cursor

    def draw(self, shards: PoolShards, n: int) -> tuple[dict[str, list[int]], AnchorPool]:
        """``n`` rows from the pool ``shards``: {shard_id: sorted rows} and the pool after the
        draw (``self`` is not changed). Rows repeat only across passes."""
        shards = normalise(shards)
        pool = AnchorPool(self.seed, self.pass_index, self.cursor, list(self.blocks))
        if not shards or n <= 0:
            return {}, pool
        if not pool.blocks:
            pool.blocks = [PoolBlock(0, _seed(pool.seed, pool.pass_index, 0), shards)]
        elif shards != pool.blocks[-1].shards:
            pool = pool._changed(shards)
        names = [s for s, _ in shards]
        taken: list[np.ndarray] = []
        left = n
        order, last = pool._order(), pool.blocks[-1]
        while left > 0:
            at = pool.cursor - last.start
            if at >= order.size:  # the pass is exhausted: reshuffle the whole pool
                pool.pass_index += 1
                pool.cursor = 0
                pool.blocks = [PoolBlock(0, _seed(pool.seed, pool.pass_index, 0), shards)]
                order, last = pool._order(), pool.blocks[-1]
                continue
            part = order[at : at + left]
            taken.append(part)
            pool.cursor += int(part.size)
            left -= int(part.size)
        rows = np.concatenate(taken)
        index, row = rows >> _ROW_BITS, rows & ((1 << _ROW_BITS) - 1)
        out: dict[str, list[int]] = {}
        for k in np.unique(index):
            out[names[int(k)]] = np.sort(row[index == k]).astype(np.int64).tolist()
        return out, pool

    # -- the pass's order --------------------------------------------------------------------------
    def _changed(self, shards: PoolShards) -> AnchorPool:
        """The pool with a new block at the cursor for the composition ``shards``."""
        seed = _seed(self.seed, self.pass_index, len(self.blocks))
        return AnchorPool(
            self.seed,
            self.pass_index,
            self.cursor,
            [*self.blocks, PoolBlock(self.cursor, seed, shards)],
        )

    def _order(self) -> np.ndarray:
        """The last block's row order, rows encoded against its own sorted shard list."""
        order: np.ndarray | None = None
        previous: PoolShards = []
        for k, block in enumerate(self.blocks):
            if order is None:
                rows = _all_rows(block.shards, set())
            else:
                # the previous block's undrawn rows of shards still present, plus new shards
                undrawn = order[block.start - self.blocks[k - 1].start :]
                rows = np.concatenate(
                    [_recode(undrawn, previous, block.shards), _all_rows(block.shards, previous)]
                )
            order = _shuffle(rows, block.seed)
            previous = block.shards
        assert order is not None
        return order


def _all_rows(shards: PoolShards, exclude: PoolShards | set[Any]) -> np.ndarray:
    """Every row of ``shards`` not in ``exclude`` (a shard there with the same row count)."""
    skip = set(exclude)
    parts = [
        (np.int64(k) << _ROW_BITS) | np.arange(n, dtype=np.int64)
        for k, (sid, n) in enumerate(shards)
        if (sid, n) not in skip
    ]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _recode(rows: np.ndarray, old: PoolShards, new: PoolShards) -> np.ndarray:
    """``rows`` of the pool ``old`` in the encoding of ``new``; rows of shards gone dropped."""
    where = {entry: k for k, entry in enumerate(new)}
    mapping = np.array([where.get(entry, -1) for entry in old], dtype=np.int64)
    index = rows >> _ROW_BITS
    target = mapping[index] if mapping.size else np.zeros(0, np.int64)
    keep = target >= 0
    return (target[keep] << _ROW_BITS) | (rows[keep] & ((1 << _ROW_BITS) - 1))


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value
