"""The document ledger: which documents a model trained and which it holds out, at 10^8 scale.

Each model keeps, in ``checkpoints/<name>/ledger/``, immutable sorted segment
files of 128-bit document digests (one per completed run, merged now and then;
the format is in :mod:`allllm.data.ledger_format`, the writers in
:mod:`allllm.data.ledger_merge`). A
checkpoint's trainer state lists the segments of *its* ledger, so the ledger
rolls back with the weights and a segment no kept checkpoint lists is garbage.

This module is the read side and the one to import:

- :class:`Ledger` answers "trained? held out? since which step?" for a batch of
  digests by one sequential pass over each segment in fixed-size blocks read
  with plain reads into a reused buffer (no memory map, no whole file: resident
  memory stays a few tens of MB however large the ledger), skipping the blocks
  whose key range holds no query;
- :func:`check_segments` says which listed segments are missing or damaged
  (a segment of a newer format is valid: FormatVersionError, never "damaged");
- :func:`clean_unlisted` removes segments no checkpoint lists and the
  temporaries of a killed write, and nothing else in the folder.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from allllm.data.ledger_format import (
    HEADER_SIZE,
    KIND_HELD_OUT,
    KIND_TRAINED,
    LEDGER_DIR,
    LEDGER_FORMAT,
    RECORD_DTYPE,
    SEGMENT_RE,
    TEMP_RE,
    SegmentReader,
    SegmentRef,
    file_sha256,
    header_problem,
)
from allllm.data.ledger_merge import (
    as_u64,
    merge_segments,
    plan_merge,
    sort_order,
    write_segment,
)
from allllm.errors import DataError
from allllm.util.atomic import fsync_dir

__all__ = [
    "KIND_HELD_OUT",
    "KIND_TRAINED",
    "LEDGER_DIR",
    "LEDGER_FORMAT",
    "RECORD_DTYPE",
    "Ledger",
    "LookupResult",
    "SegmentRef",
    "check_segments",
    "clean_unlisted",
    "merge_segments",
    "plan_merge",
    "write_segment",
]

_NO_STEP = np.iinfo(np.int64).max
_QUERY_CHUNK = 1 << 16  # queries matched against a block at once


@dataclass(frozen=True)
class LookupResult:
    """Per query digest, in the caller's order: trained, held out, earliest trained step."""

    trained: np.ndarray  # bool
    held_out: np.ndarray  # bool
    step: np.ndarray  # int64: the step of the earliest TRAINED record, -1 when none


class _Found:
    """Answers for the distinct sorted queries, filled block by block."""

    def __init__(self, n: int) -> None:
        self.trained = np.zeros(n, bool)
        self.held_out = np.zeros(n, bool)
        self.step = np.full(n, _NO_STEP, np.int64)

    def add(
        self, block: np.ndarray, query: np.ndarray, start: np.ndarray, stop: np.ndarray
    ) -> None:
        """Query ``query[i]`` matches records ``start[i]:stop[i]`` of ``block`` (a few each:
        one per kind)."""
        width = stop - start
        for k in range(int(width.max()) if width.size else 0):
            more = width > k
            q, rec = query[more], block[start[more] + k]
            trained = rec["kind"] == KIND_TRAINED
            t = q[trained]
            self.trained[t] = True
            self.step[t] = np.minimum(self.step[t], rec["step"][trained].astype(np.int64))
            self.held_out[q[rec["kind"] == KIND_HELD_OUT]] = True

    def match(self, block: np.ndarray, qhi: np.ndarray, qlo: np.ndarray) -> None:
        """Record the matches in a sorted block of the sorted distinct queries (qhi, qlo)."""
        bhi = np.ascontiguousarray(block["hi"])
        qa = int(np.searchsorted(qhi, bhi[0], "left"))
        qb = int(np.searchsorted(qhi, bhi[-1], "right"))
        for first in range(qa, qb, _QUERY_CHUNK):  # bounded temporaries however many queries
            stop = min(first + _QUERY_CHUNK, qb)
            self._match_some(block, bhi, first, qhi[first:stop], qlo[first:stop])

    def _match_some(
        self, block: np.ndarray, bhi: np.ndarray, qa: int, qhi: np.ndarray, qlo: np.ndarray
    ) -> None:
        """Match the queries ``qa ..`` (qhi, qlo) in ``block`` (``bhi`` its hi column)."""
        left = np.searchsorted(bhi, qhi, "left")
        right = np.searchsorted(bhi, qhi, "right")
        hit = np.flatnonzero(right > left)
        if not hit.size:
            return
        left, right, want = left[hit], right[hit], qlo[hit]
        blo = block["lo"]
        first_lo = blo[left]
        one_lo = first_lo == blo[right - 1]  # the run of equal hi has a single lo
        same = one_lo & (first_lo == want)
        self.add(block, qa + hit[same], left[same], right[same])
        mixed = np.flatnonzero(~one_lo)  # equal hi, several lo: rare, one by one
        if mixed.size:
            starts, stops = [], []
            for j in mixed.tolist():
                run = blo[left[j] : right[j]]
                starts.append(left[j] + np.searchsorted(run, want[j], "left"))
                stops.append(left[j] + np.searchsorted(run, want[j], "right"))
            self.add(block, qa + hit[mixed], np.array(starts), np.array(stops))


class Ledger:
    """A read view of the ledger ``segments`` (as a checkpoint lists them) in ``ledger_dir``.

    Reads ``block_records`` records (24 bytes each) at a time.
    """

    def __init__(
        self, ledger_dir: Path, segments: list[SegmentRef], *, block_records: int = 1 << 20
    ) -> None:
        if block_records < 1:
            raise ValueError("block_records must be at least 1")
        self.ledger_dir = Path(ledger_dir)
        self._segments = list(segments)
        self.block_records = block_records

    @property
    def segments(self) -> list[SegmentRef]:
        return list(self._segments)

    @property
    def count(self) -> int:
        """Records in all segments (a document trained and held out counts twice)."""
        return sum(ref.count for ref in self._segments)

    @property
    def version(self) -> str:
        """A short hash of the sorted segment names: the cache key of "this ledger"."""
        names = "\n".join(sorted(ref.name for ref in self._segments))
        return hashlib.sha256(names.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Ledger({len(self._segments)} segments, {self.count} records)"

    def _blocks(self, reader: SegmentReader, qhi: np.ndarray) -> list[tuple[int, int]]:
        """(first, stop) record ranges of the blocks whose key range holds a query."""
        size = self.block_records
        starts = np.arange(0, reader.count, size, dtype=np.int64)
        stops = np.minimum(starts + size, reader.count)
        if starts.size == 1:
            return [(0, int(stops[0]))]
        first = np.array([reader.record(int(i))["hi"] for i in starts], np.uint64)
        last = np.array([reader.record(int(i) - 1)["hi"] for i in stops], np.uint64)
        wanted = np.searchsorted(qhi, last, "right") > np.searchsorted(qhi, first, "left")
        return [(int(a), int(b)) for a, b in zip(starts[wanted], stops[wanted])]

    def lookup(self, hi: np.ndarray, lo: np.ndarray) -> LookupResult:
        """Which of the digests (hi, lo) the ledger holds, aligned with the queries (any
        order, duplicates allowed)."""
        hi, lo = as_u64(hi, "hi"), as_u64(lo, "lo")
        if hi.shape != lo.shape:
            raise ValueError(f"hi and lo differ in shape: {hi.shape}, {lo.shape}")
        order = sort_order(hi, lo)
        qhi, qlo = hi[order], lo[order]  # the queries sorted, then made distinct
        dup = (qhi[1:] == qhi[:-1]) & (qlo[1:] == qlo[:-1])
        group = None  # each sorted query's distinct index (None: all are distinct)
        if dup.any():
            distinct = np.concatenate([[True], ~dup])
            group = np.cumsum(distinct) - 1
            qhi, qlo = qhi[distinct], qlo[distinct]
            del distinct
        del dup
        found = _Found(qhi.size)
        buf = None  # one block buffer, reused: the lookup's memory does not grow with the ledger
        for ref in self._segments if qhi.size else ():
            if not ref.count:
                continue
            with SegmentReader(self.ledger_dir, ref) as reader:
                for first, stop in self._blocks(reader, qhi):
                    if buf is None:
                        buf = np.empty(min(self.block_records, self.count), RECORD_DTYPE)
                    block = reader.read_into(first, buf[: stop - first])
                    found.match(block, qhi, qlo)
        del buf, qhi, qlo
        found.step[~found.trained] = -1
        return LookupResult(
            trained=_unsort(found.trained, group, order),
            held_out=_unsort(found.held_out, group, order),
            step=_unsort(found.step, group, order),
        )

    def iter_records(self) -> Iterator[np.ndarray]:
        """The records, segment by segment, in blocks of ``block_records`` (each sorted)."""
        for ref in self._segments:
            with SegmentReader(self.ledger_dir, ref) as reader:
                for first in range(0, ref.count, self.block_records):
                    n = min(self.block_records, ref.count - first)
                    yield reader.read_into(first, np.empty(n, RECORD_DTYPE))


def _unsort(values: np.ndarray, group: np.ndarray | None, order: np.ndarray) -> np.ndarray:
    """Answers for the distinct sorted queries, in the caller's order."""
    out = np.empty(order.size, values.dtype)
    out[order] = values if group is None else values[group]
    return out


def _segment_problem(path: Path, ref: SegmentRef, full: bool) -> str | None:
    try:
        with path.open("rb") as fh:
            head = fh.read(HEADER_SIZE)
            size = os.fstat(fh.fileno()).st_size
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    why = header_problem(head, size, str(path), ref.count)
    if why is None and full and file_sha256(path) != ref.sha256:
        why = "damaged: its content does not match its sha256"
    return why


def check_segments(
    ledger_dir: Path, segments: Iterable[SegmentRef], *, full: bool = False
) -> list[tuple[SegmentRef, str]]:
    """The listed segments that are missing or damaged, each with why (one phrase).

    Checks header, version, count and size; ``full`` also the sha256 (reads every
    byte). A segment of a newer format raises FormatVersionError: it is not damaged.
    """
    problems = []
    for ref in segments:
        why = _segment_problem(Path(ledger_dir) / ref.name, ref, full)
        if why is not None:
            problems.append((ref, why))
    return problems


def clean_unlisted(ledger_dir: Path, keep: set[str]) -> list[str]:
    """Delete the segment files not named in ``keep`` and the temporaries of killed writes.

    Only plain files named ``seg-<16 hex>.ledger`` or ``.seg-<pid>-<hex>.ledger.tmp``
    are candidates; anything else in the folder is never touched. The caller holds the
    checkpoint lock (the only writer). Returns the names removed.
    """
    ledger_dir = Path(ledger_dir)
    try:
        entries = sorted(os.scandir(ledger_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise DataError(f"{ledger_dir}: cannot list: {exc.strerror or exc}") from None
    removed = []
    for entry in entries:
        segment = SEGMENT_RE.match(entry.name) and entry.name not in keep
        if not (segment or TEMP_RE.match(entry.name)) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise DataError(
                f"{entry.path}: cannot remove an unlisted ledger file: {exc.strerror or exc}",
                f"make {ledger_dir} writable",
            ) from None
        removed.append(entry.name)
    if removed:
        fsync_dir(ledger_dir)
    return removed
