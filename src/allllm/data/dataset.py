"""Rows of a set of shards as int64 tensors, read without loading files (docs/design.md: tokens, documents, rows; shards; validation rows).

Global row ``i`` is row ``i - offset[s]`` of shard ``s`` (shards in the order given).
Each row comes back as ``seq_len`` int64 ids plus its valid length; positions past
the valid length hold the shard's pad id (meta ``tokenizer.pad_id``, else its EOS
id, else 0 — the same value a ``.bin`` stores there), but only the length matters:
the loss never looks at them.

- ``.bin``: ``np.memmap`` (never read whole); rows are cast to int64 *before* torch
  sees them (uint16 would wrap silently otherwise).
- legacy ``torch.save`` ``.bin``: ``torch.load(weights_only=True, mmap=True)``, then
  the same row arithmetic.
- ``.jsonl``-only shards: a line-offset index built once and cached in
  ``data/.allllm/cache/`` (keyed by shard_id, size and mtime; rebuilt when stale;
  written atomically) and memory-mapped, so memory does not grow with the shard and
  a random row costs one seek. Each row read is validated (a JSON list of ints,
  ``0 <= id < vocab``, the length meta promises) and a bad one is a DataError
  naming the file and line.

:meth:`ShardDataset.fetch` returns a whole micro-batch as one ``[B, seq_len]``
tensor with one vectorized memmap gather per shard.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from allllm.data.jsonl_rows import build_line_index, parse_jsonl_row
from allllm.data.shard_format import CACHE_DIR, ShardMeta, numpy_dtype, shard_file
from allllm.data.valsplit import split_rows
from allllm.errors import DataError
from allllm.util.atomic import atomic_writer

if TYPE_CHECKING:
    import torch

MAX_OPEN_SHARDS = 64  # open memmaps / file handles kept at once (each holds a descriptor)


@dataclass(frozen=True)
class ShardSource:
    """Everything needed to read one shard's rows (built by the registry or from a meta)."""

    name: str
    path: Path  # the file rows are read from
    kind: Literal["bin", "jsonl", "legacy"]
    seq_len: int
    n_rows: int
    last_row_len: int
    dtype: str | None  # bin only: uint16 | uint32
    pad_id: int = 0
    shard_id: str | None = None

    @classmethod
    def from_meta(
        cls, data_dir: Path, stem: str, meta: ShardMeta, *, prefer: str = "bin"
    ) -> ShardSource:
        """Read ``stem`` per its meta, from ``prefer`` when meta lists it."""
        role = prefer if prefer in meta.files else next(iter(meta.files))
        tok = meta.tokenizer
        pad = tok.pad_id if tok.pad_id is not None else (tok.eos_id or 0)
        return cls(
            name=stem,
            path=shard_file(data_dir, stem, role),
            kind=role,  # type: ignore[arg-type]
            seq_len=meta.seq_len,
            n_rows=meta.n_rows,
            last_row_len=meta.last_row_len,
            dtype=meta.dtype if role == "bin" else None,
            pad_id=pad,
            shard_id=meta.shard_id,
        )

    def row_len(self, row: int) -> int:
        return self.last_row_len if row == self.n_rows - 1 else self.seq_len


def _open_raw(path: Path) -> Any:
    """An unbuffered binary handle (one seek + one read per row)."""
    return path.open("rb", buffering=0)


class _JsonlReader:
    def __init__(self, src: ShardSource, vocab_limit: int, cache_dir: Path | None) -> None:
        self.src, self.vocab_limit = src, vocab_limit
        self.offsets = self._index(cache_dir)
        self.fh = _open_raw(src.path)

    def _index(self, cache_dir: Path | None) -> np.ndarray:
        src = self.src
        st = src.path.stat()
        key = src.shard_id or src.name
        cache = cache_dir / f"{key}.{st.st_size}.{st.st_mtime_ns}.lines.npy" if cache_dir else None
        if cache is not None and cache.exists():
            try:
                offsets = np.load(cache, mmap_mode="r", allow_pickle=False)
                if (
                    offsets.ndim == 1
                    and offsets.size == src.n_rows + 1
                    and offsets[-1] == st.st_size
                ):
                    return offsets
            except (OSError, ValueError):
                pass  # a damaged cache entry is rebuilt below
        offsets = build_line_index(src.path)
        if offsets.size - 1 != src.n_rows:
            raise DataError(
                f"{src.path}: has {offsets.size - 1} lines, meta says {src.n_rows} rows",
                "the file changed after tokenize; re-tokenize its source",
            )
        if cache is not None:
            self._save(cache, key, offsets)
        return offsets

    @staticmethod
    def _save(cache: Path, key: str, offsets: np.ndarray) -> None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            for stale in cache.parent.glob(f"{key}.*.lines.npy"):
                if stale != cache:  # a peer process may have just written this very entry
                    stale.unlink(missing_ok=True)
            with atomic_writer(cache, "wb") as fh:
                np.save(fh, offsets, allow_pickle=False)
        except OSError:
            pass  # a read-only data dir: the index lives in memory for this process only

    def read_into(
        self, local: np.ndarray, out: np.ndarray, dest: np.ndarray, lengths: np.ndarray
    ) -> None:
        src = self.src
        out[dest] = src.pad_id
        for row, d in zip(local.tolist(), dest.tolist()):
            start, end = int(self.offsets[row]), int(self.offsets[row + 1])
            self.fh.seek(start)
            line = self.fh.read(end - start)
            where = f"{src.path}:{row + 1}"
            ids = parse_jsonl_row(
                line, where=where, seq_len=src.seq_len, vocab_limit=self.vocab_limit
            )
            if ids.size != src.row_len(row):
                raise DataError(
                    f"{where}: {ids.size} ids, meta says {src.row_len(row)}",
                    "the file changed after tokenize; re-tokenize its source",
                )
            out[d, : ids.size] = ids
            lengths[d] = ids.size

    def close(self) -> None:
        self.fh.close()


class _FlatReader:
    """Rows of a flat id array: a ``.bin`` memmap (padded) or a legacy tensor (maybe not)."""

    def __init__(self, src: ShardSource) -> None:
        self.src = src
        if src.kind == "legacy":
            from allllm.data.legacy import load_legacy

            self.flat = load_legacy(src.path, src.seq_len).flat
        else:
            dtype = numpy_dtype(src.dtype or "")
            expected = src.n_rows * src.seq_len * dtype.itemsize
            size = src.path.stat().st_size
            if size != expected:
                raise DataError(
                    f"{src.path}: {size} bytes, expected {expected} for {src.n_rows} rows",
                    "the file changed after tokenize; re-tokenize its source",
                )
            self.flat = np.memmap(src.path, dtype=dtype, mode="r") if size else np.zeros(0, dtype)
        full = min(self.flat.size // src.seq_len, src.n_rows)
        self.rows2d = self.flat[: full * src.seq_len].reshape(full, src.seq_len)

    def read_into(
        self, local: np.ndarray, out: np.ndarray, dest: np.ndarray, lengths: np.ndarray
    ) -> None:
        src, n_full = self.src, self.rows2d.shape[0]
        in_2d = local < n_full
        if in_2d.all():
            out[dest] = self.rows2d[local]  # one gather; numpy casts into int64 without wrapping
        else:
            out[dest[in_2d]] = self.rows2d[local[in_2d]]
            tail = self.flat[n_full * src.seq_len :]
            for d in dest[~in_2d].tolist():  # only the unpadded final row of a legacy stream
                out[d, : tail.size] = tail
        lengths[dest] = np.where(local == src.n_rows - 1, src.last_row_len, src.seq_len)
        if src.last_row_len < src.seq_len:
            for d in dest[local == src.n_rows - 1].tolist():
                out[d, src.last_row_len :] = src.pad_id

    def close(self) -> None:
        self.flat = self.rows2d = None  # type: ignore[assignment]


class ShardDataset:
    """Map-style dataset over the rows of ``sources`` (global row = shard offset + row).

    ``ds[i]`` is ``(ids int64 tensor [seq_len], valid length)``; :meth:`fetch` reads a batch.
    Safe to pickle into DataLoader workers: open files are reopened lazily.
    """

    def __init__(
        self,
        sources: Sequence[ShardSource],
        *,
        vocab_limit: int,
        cache_dir: Path | None = None,
        max_open: int = MAX_OPEN_SHARDS,
    ) -> None:
        if not sources:
            raise DataError("no shards to read", "tokenize some text first: allllm tokenize")
        seq_lens = {s.seq_len for s in sources}
        if len(seq_lens) != 1:
            raise DataError(f"shards with different seq_len {sorted(seq_lens)} in one dataset")
        self.sources = list(sources)
        self.seq_len = seq_lens.pop()
        self.vocab_limit = vocab_limit
        self.cache_dir = cache_dir
        self.max_open = max(1, max_open)
        counts = np.array([s.n_rows for s in self.sources], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._readers: OrderedDict[int, _JsonlReader | _FlatReader] = OrderedDict()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"] = OrderedDict()
        return state

    def _reader(self, shard: int) -> _JsonlReader | _FlatReader:
        reader = self._readers.get(shard)
        if reader is not None:
            self._readers.move_to_end(shard)
            return reader
        src = self.sources[shard]
        try:
            if src.kind == "jsonl":
                cache = self.cache_dir or src.path.parent / CACHE_DIR
                reader = _JsonlReader(src, self.vocab_limit, cache)
            else:
                reader = _FlatReader(src)
        except FileNotFoundError:
            raise DataError(f"{src.path}: shard file vanished", "run `allllm status`") from None
        self._readers[shard] = reader
        while len(self._readers) > self.max_open:
            self._readers.popitem(last=False)[1].close()
        return reader

    def close(self) -> None:
        while self._readers:
            self._readers.popitem()[1].close()

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, row within the shard) of global rows."""
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        return shard, rows - self.offsets[shard]

    def fetch_numpy(self, rows: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global ``rows`` as ``(ids int64 [B, seq_len], lengths int64 [B])`` numpy arrays."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = len(self)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            bad = int(rows.min() if rows.min() < 0 else rows.max())
            raise IndexError(f"row {bad} outside the dataset's {n} rows")
        out = np.empty((rows.size, self.seq_len), dtype=np.int64)
        lengths = np.empty(rows.size, dtype=np.int64)
        if not rows.size:
            return out, lengths
        shard, local = self.locate(rows)
        order = np.argsort(shard, kind="stable")
        cuts = np.flatnonzero(np.diff(shard[order])) + 1
        for group in np.split(order, cuts):
            self._reader(int(shard[group[0]])).read_into(local[group], out, group, lengths)
        return out, lengths

    def fetch(self, rows: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """A micro-batch: ``(ids int64 tensor [B, seq_len], lengths int64 tensor [B])``."""
        import torch

        ids, lengths = self.fetch_numpy(rows)
        return torch.from_numpy(ids), torch.from_numpy(lengths)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int]:
        ids, lengths = self.fetch([row])
        return ids[0], int(lengths[0])

    # -- row splits (docs/design.md: validation rows) ------------------------------------------------------------
    def _split(self, seed: int, val_fraction: float, which: int) -> np.ndarray:
        parts = []
        for s, src in enumerate(self.sources):
            if src.shard_id is None:
                raise DataError(f"{src.name}: shard has no shard_id; validate it first")
            rows = split_rows(seed, src.shard_id, src.n_rows, val_fraction)[which]
            parts.append(rows + self.offsets[s])
        dtype = np.int32 if len(self) < 2**31 else np.int64
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    def training_rows(self, seed: int, val_fraction: float) -> np.ndarray:
        """Global ids of the training rows (int32 when they fit), in shard order."""
        return self._split(seed, val_fraction, 0)

    def validation_rows(self, seed: int, val_fraction: float) -> np.ndarray:
        """Global ids of the validation rows, in shard order."""
        return self._split(seed, val_fraction, 1)
