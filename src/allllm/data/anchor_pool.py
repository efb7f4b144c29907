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
    """Sorted, one entry per id (ids are content hashes: the row count of a repeated id is the
    same; if not, the largest is kept), zero-row shards left out."""
    one = dict(sorted((str(s), int(n)) for s, n in shards if int(n) > 0))
    return sorted(one.items())


def _seed(seed: int, pass_index: int, block: int) -> int:
    """A block's shuffle seed, from the state alone (no global RNG), so a resume redraws it."""
    digest = hashlib.sha256(f"anchor:{seed}:{pass_index}:{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


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
        """A pool that has drawn nothing: the first draw starts pass 0."""
        return cls(seed=int(seed))

    # -- the stored form -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for the checkpoint: a few ints and the blocks' shard lists."""
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
        except KeyError as exc:
            raise _malformed(f"no {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise _malformed(str(exc) or type(exc).__name__) from None
        starts = [b.start for b in blocks]
        if pool.cursor < 0 or pool.pass_index < 0 or (blocks and starts[0] != 0):
            raise _malformed("negative cursor or pass, or a pass not starting at 0")
        if starts != sorted(starts) or any(s > pool.cursor for s in starts):
            raise _malformed("blocks out of order or past the cursor")
        if any(
            b.shards != normalise(b.shards) or len({s for s, _ in b.shards}) < len(b.shards)
            for b in blocks
        ):
            raise _malformed("a block's shards are not sorted, unique and non-empty")
        return pool

    # -- drawing ---------------------------------------------------------------------------------
    def pass_rows(self) -> int:
        """Rows in the current pass (0 before the first draw)."""
        if len(self.blocks) <= 1:  # one block: the whole pool, no order needed
            return sum(n for _, n in self.blocks[0].shards) if self.blocks else 0
        return self.blocks[-1].start + int(self._order(shuffle_last=False)[0].size)

    def remaining(self, shards: PoolShards) -> int:
        """Rows left in the current pass if ``shards`` were drawn from now."""
        shards = normalise(shards)
        if not self.blocks:
            return sum(n for _, n in shards)
        pool = self if shards == self.blocks[-1].shards else self._changed(shards)
        return max(0, pool.pass_rows() - pool.cursor)

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
        taken: list[np.ndarray] = []
        left = n
        order, union = pool._order()
        while left > 0:
            at = pool.cursor - pool.blocks[-1].start
            if at >= order.size:  # the pass is exhausted: reshuffle the whole pool
                pool.pass_index += 1
                pool.cursor = 0
                pool.blocks = [PoolBlock(0, _seed(pool.seed, pool.pass_index, 0), shards)]
                order, union = pool._order()
                continue
            part = order[at : at + left]
            taken.append(_flat(part, union, shards))
            pool.cursor += int(part.size)
            left -= int(part.size)
        return _by_shard(np.concatenate(taken), shards), pool

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

    def _order(self, shuffle_last: bool = True) -> tuple[np.ndarray, PoolShards]:
        """The last block's row order and the union of the pass's shards its rows index.

        Each block is regenerated from the one before (pool changes are rare, so a pass has
        few blocks); one encoding for all of them means a change only masks rows out. A
        caller that needs only the last block's size skips its shuffle (``shuffle_last``).
        """
        union = sorted({entry for block in self.blocks for entry in block.shards})
        where = {entry: k for k, entry in enumerate(union)}
        order = np.zeros(0, np.int64)
        previous: set[tuple[str, int]] = set()
        for k, block in enumerate(self.blocks):
            present = set(block.shards)
            new = _all_rows([(where[e], e[1]) for e in block.shards if e not in previous])
            if k:  # the previous block's undrawn rows of shards still present
                undrawn = order[block.start - self.blocks[k - 1].start :]
                keep = np.array([e in present for e in union], dtype=bool)
                new = np.concatenate([undrawn[keep[undrawn >> _ROW_BITS]], new])
            order = new
            if shuffle_last or k < len(self.blocks) - 1:  # in place: ``new`` is a fresh array
                np.random.Generator(np.random.PCG64(block.seed)).shuffle(order)
            previous = present
        return order, union


def _all_rows(shards: list[tuple[int, int]]) -> np.ndarray:
    """Every row of the (union index, n_rows) shards, encoded."""
    parts = [(np.int64(k) << _ROW_BITS) | np.arange(n, dtype=np.int64) for k, n in shards]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _flat(rows: np.ndarray, union: PoolShards, shards: PoolShards) -> np.ndarray:
    """Encoded rows of the pool ``shards`` as positions in its concatenated rows."""
    offset = dict(zip(shards, np.cumsum([0] + [n for _, n in shards]).tolist()))
    base = np.array([offset.get(entry, 0) for entry in union], dtype=np.int64)
    return base[rows >> _ROW_BITS] + (rows & ((1 << _ROW_BITS) - 1))


def _by_shard(flat: np.ndarray, shards: PoolShards) -> dict[str, list[int]]:
    """Positions as {shard_id: sorted rows}; a large draw counts rows rather than sorting them."""
    total = sum(n for _, n in shards)
    if flat.size * 8 > total:
        flat = np.repeat(np.arange(total, dtype=np.int64), np.bincount(flat, minlength=total))
    else:
        flat = np.sort(flat)
    edges = np.cumsum([0] + [n for _, n in shards])
    cuts = np.searchsorted(flat, edges)
    return {
        sid: (flat[cuts[k] : cuts[k + 1]] - edges[k]).tolist()
        for k, (sid, _) in enumerate(shards)
        if cuts[k + 1] > cuts[k]
    }


def _malformed(why: str) -> DataError:
    """The one-line error of a stored pool that cannot be trusted to redraw the same rows."""
    return DataError(
        f"checkpoint anchor pool is malformed ({why})",
        "the checkpoint's trainer state was edited or damaged; restore it from a backup",
    )


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value
