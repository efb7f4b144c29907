"""The order rows are trained in: one shuffled global order, shared out to ranks (docs/design.md: a training run).

For epoch ``e`` the order of ``n_rows`` row positions is::

    order = np.arange(n_rows, dtype=int32 if n_rows < 2**31 else int64)
    np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, e]))).shuffle(order)

It depends on the seed, the epoch and the row count only — never on the world
size — so a run resumes at exactly the next row on any number of ranks. Global
batch ``b`` is ``order[b*B:(b+1)*B]`` (the final one may be shorter and is still
yielded); rank ``k`` of ``W`` takes ``batch[k::W]`` of it. The state is a plain
JSON-able dict: seed, epoch, position (rows of the epoch handed out), the row
count, and a check value of the order so a resume on a numpy whose shuffle
differs fails loudly instead of training other rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from allllm.errors import DataError

SAMPLER_STATE_VERSION = 1


def epoch_order(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled positions ``0..n_rows-1`` of ``epoch`` (int32 when they fit: 4 bytes a row)."""
    order = np.arange(n_rows, dtype=np.int32 if n_rows < 2**31 else np.int64)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
    rng.shuffle(order)
    return order


def order_check(order: np.ndarray) -> str:
    """A short digest of the first 1024 positions (detects a changed shuffle on resume)."""
    head = np.ascontiguousarray(order[:1024], dtype="<i8")
    return hashlib.sha256(head.tobytes()).hexdigest()[:16]


class RowSampler:
    """Yields this rank's share (an int64 array of row positions) of each global batch.

    ``position`` advances when a batch is handed out, so a checkpoint taken after that
    batch was trained records the next row to train.
    """

    def __init__(
        self,
        n_rows: int,
        global_batch: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        epochs: int = 1,
    ) -> None:
        if n_rows < 0 or global_batch < 1 or epochs < 1 or seed < 0:
            raise ValueError("need n_rows >= 0, global_batch >= 1, epochs >= 1 and seed >= 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n_rows, self.global_batch, self.seed = n_rows, global_batch, seed
        self.rank, self.world_size, self.epochs = rank, world_size, epochs
        self.epoch, self.position = 0, 0
        self._order: np.ndarray | None = None
        self._order_epoch = -1

    # -- order ---------------------------------------------------------------------------------
    def order(self, epoch: int | None = None) -> np.ndarray:
        """The global order of ``epoch`` (default: the current one); cached for the current one."""
        epoch = self.epoch if epoch is None else epoch
        if self._order_epoch != epoch:
            self._order, self._order_epoch = epoch_order(self.n_rows, self.seed, epoch), epoch
        return self._order  # type: ignore[return-value]

    # -- progress ------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.epoch >= self.epochs or self.n_rows == 0

    def batches_per_epoch(self) -> int:
        return -(-self.n_rows // self.global_batch)

    def total_batches(self) -> int:
        """Global batches of the whole run (all epochs), partial ones included."""
        return self.batches_per_epoch() * self.epochs

    def batches_done(self) -> int:
        if self.n_rows == 0:
            return 0
        done = min(self.epoch, self.epochs) * self.batches_per_epoch()
        return done + (-(-self.position // self.global_batch) if self.epoch < self.epochs else 0)

    def __len__(self) -> int:
        """Global batches left."""
        return self.total_batches() - self.batches_done()

    def next_global_batch(self) -> np.ndarray | None:
        """The next whole global batch (all ranks' rows, in order), or None at the end."""
        if self.finished:
            return None
        order = self.order()
        batch = order[self.position : self.position + self.global_batch].astype(np.int64)
        self.position += batch.size
        if self.position >= self.n_rows:
            self.epoch, self.position = self.epoch + 1, 0
        return batch

    def __iter__(self) -> Iterator[np.ndarray]:
        """This rank's rows of each remaining global batch (may be empty on the final one)."""
        while (batch := self.next_global_batch()) is not None:
            yield batch[self.rank :: self.world_size]

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain JSON data: enough to continue at exactly the next row, on any world size."""
        check = order_check(self.order()) if not self.finished else None
        return {
            "version": SAMPLER_STATE_VERSION,
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "n_rows": self.n_rows,
            "order_check": check,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; DataError if it belongs to another row set or shuffle."""
        try:
            version, seed = int(state["version"]), int(state["seed"])
            epoch, position, n_rows = (
                int(state["epoch"]),
                int(state["position"]),
                int(state["n_rows"]),
            )
        except (KeyError, TypeError, ValueError):
            raise DataError(f"sampler state {state!r} is incomplete or malformed") from None
        if version != SAMPLER_STATE_VERSION:
            raise DataError(f"sampler state version {version} is not {SAMPLER_STATE_VERSION}")
        if n_rows != self.n_rows or seed != self.seed:
            raise DataError(
                f"the saved row order covers {n_rows} rows with seed {seed}; this run has "
                f"{self.n_rows} rows with seed {self.seed}",
                "the run's shards changed since the checkpoint; resume with the same shards or "
                "pass --abandon-pending",
            )
        if not (0 <= epoch <= self.epochs and 0 <= position < max(self.n_rows, 1)):
            raise DataError(f"sampler state epoch {epoch} / position {position} out of range")
        self.epoch, self.position = epoch, position
        check = state.get("order_check")
        if check is not None and not self.finished and order_check(self.order()) != check:
            raise DataError(
                "the shuffled row order differs from the one this run started with (was numpy "
                "upgraded?)",
                "resume with the numpy version the run started with, or pass --abandon-pending",
            )
