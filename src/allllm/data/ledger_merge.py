"""Segment files of the document ledger: their format, writing one, merging several.

The ledger (:mod:`allllm.data.ledger`, the module to import) is a set of
immutable files in ``checkpoints/<name>/ledger/``. This module makes them; the
read side (lookup, checks, cleanup) builds on it, never the other way round.

A segment ``seg-<first 16 hex of its sha256>.ledger`` is a 32-byte header
(magic ``b"ALLLLEDG"``, ``format_version`` uint32, record size uint32 (24),
record count uint64, 8 zero bytes, little-endian) and then ``count`` records of
:data:`RECORD_DTYPE`, sorted by (hi, lo, kind), one per (hi, lo, kind): a
document recorded twice keeps its earliest step. The name is the content's
address, so writing the same records again gives the same file (and reuses it),
and a checkpoint's list of (name, sha256, count) pins its ledger exactly.

Files are written as util.atomic does (a temporary in the same folder, fsync,
rename, fsync the folder; the umask's mode), so a kill leaves a whole segment
or a temporary named ``.seg-<pid>-<hex>.ledger.tmp`` that cleanup recognises.
Merging streams: each input is read in blocks, so memory stays bounded however
large the ledger grows.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np

from allllm.data.ledger_format import (
    KIND_HELD_OUT,
    KIND_TRAINED,
    RECORD_DTYPE,
    REPAIR_HINT,
    SegmentReader,
    SegmentRef,
    _header,
    file_sha256,
)
from allllm.errors import DataError
from allllm.util.atomic import fsync_dir
from allllm.util.faults import fault_point


def sort_order(hi: np.ndarray, lo: np.ndarray, minor: np.ndarray | None = None) -> np.ndarray:
    """Indices that sort by (hi, lo[, minor]): one argsort of ``hi`` (64 random bits: ties
    are rare), then a full sort of only the elements in runs of equal ``hi``.

    (numpy's ``S16`` sort is no shortcut: it ignores trailing NUL bytes.)
    """
    order = np.argsort(hi, kind="stable")  # timsort: fast on the sorted runs a merge gives
    ordered = hi[order]
    ties = np.flatnonzero(ordered[1:] == ordered[:-1])
    del ordered
    if ties.size:
        at = np.union1d(ties, ties + 1)
        sub = order[at]
        keys = (lo[sub], hi[sub]) if minor is None else (minor[sub], lo[sub], hi[sub])
        order[at] = sub[np.lexsort(keys)]
    return order


def sorted_records(
    hi: np.ndarray, lo: np.ndarray, kind: np.ndarray, step: np.ndarray
) -> np.ndarray:
    """Records of the aligned columns sorted by (hi, lo, kind), one per (hi, lo, kind):
    the smallest step. Built in sorted order, column by column (no unsorted copy)."""
    minor = (kind.astype(np.uint64) << np.uint64(32)) | step.astype(np.uint64)
    order = sort_order(hi, lo, minor)
    del minor
    out = np.empty(order.size, RECORD_DTYPE)
    for name, column in (("hi", hi), ("lo", lo), ("kind", kind), ("step", step)):
        out[name] = column[order]
    del order
    if out.size > 1:
        shi, slo, skind = out["hi"], out["lo"], out["kind"]
        new = (shi[1:] != shi[:-1]) | (slo[1:] != slo[:-1]) | (skind[1:] != skind[:-1])
        if not new.all():
            out = out[np.concatenate([[True], new])]
    return out


def as_u64(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` as a 1-d uint64 array (no copy when it is one); ValueError otherwise."""
    arr = np.asarray(values)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "ui"):
        raise ValueError(f"{what} must be a 1-d array of integers, not {arr.dtype} {arr.shape}")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise ValueError(f"{what} holds negative values")
    return arr.astype(np.uint64, copy=False)


def _columns(
    hi: np.ndarray, lo: np.ndarray, kind: np.ndarray, step: np.ndarray | int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The aligned columns of one run's documents, checked (ValueError: a caller's bug)."""
    hi, lo = as_u64(hi, "hi"), as_u64(lo, "lo")
    kind = np.asarray(kind)
    steps = np.broadcast_to(np.asarray(step), hi.shape)
    if steps.dtype.kind not in "ui" or (kind.size and kind.dtype.kind not in "ui"):
        raise ValueError(f"kind and step must be integers, not {kind.dtype} and {steps.dtype}")
    if lo.shape != hi.shape or kind.shape != hi.shape:
        raise ValueError(f"hi, lo, kind differ in shape: {hi.shape}, {lo.shape}, {kind.shape}")
    if hi.size and not ((kind == KIND_TRAINED) | (kind == KIND_HELD_OUT)).all():
        raise ValueError(f"kind must be KIND_TRAINED ({KIND_TRAINED}) or KIND_HELD_OUT")
    if hi.size and (steps.min() < 0 or steps.max() > np.iinfo(np.uint32).max):
        raise ValueError("step must be within 0 .. 2**32 - 1")
    return hi, lo, kind.astype(np.uint32, copy=False), steps.astype(np.uint32, copy=False)


def _temp_path(ledger_dir: Path) -> Path:
    return ledger_dir / f".seg-{os.getpid()}-{os.urandom(4).hex()}.ledger.tmp"


def _install(temp: Path, ledger_dir: Path, sha: str, count: int) -> SegmentRef:
    """Rename a complete, fsynced temporary to its content address; fsync the folder."""
    ref = SegmentRef(f"seg-{sha[:16]}.ledger", sha, count)
    os.replace(temp, ledger_dir / ref.name)
    fsync_dir(ledger_dir)
    return ref


def write_segment(
    ledger_dir: Path, hi: np.ndarray, lo: np.ndarray, kind: np.ndarray, step: np.ndarray | int
) -> SegmentRef:
    """Write one run's documents as a segment (sorted, de-duplicated, atomic, content-addressed).

    Sorted in memory (one run: up to ~10^7 documents). A complete file of the same
    content already in place is reused, not written again.
    """
    ledger_dir = Path(ledger_dir)
    records = sorted_records(*_columns(hi, lo, kind, step))
    head = _header(int(records.size))
    body = memoryview(records).cast("B")
    sha = hashlib.sha256(head)
    sha.update(body)
    digest = sha.hexdigest()
    ledger_dir.mkdir(parents=True, exist_ok=True)
    name = f"seg-{digest[:16]}.ledger"
    if file_sha256(ledger_dir / name) == digest:
        return SegmentRef(name, digest, int(records.size))
    temp = _temp_path(ledger_dir)
    try:
        with temp.open("xb") as fh:  # a plain create: the umask's mode (0644 under 022)
            fh.write(head)
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        ref = _install(temp, ledger_dir, digest, int(records.size))
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fault_point("ledger.segment")
    return ref


# --- merging ------------------------------------------------------------------------------


def count_upto(hi: np.ndarray, block: np.ndarray, key: tuple[int, int, int]) -> int:
    """How many records of a sorted block (``hi`` its contiguous hi column) have
    (hi, lo, kind) <= ``key``."""
    khi, klo, kkind = key
    a = int(np.searchsorted(hi, np.uint64(khi), "left"))
    b = int(np.searchsorted(hi, np.uint64(khi), "right"))
    if a == b:
        return a
    lo = block["lo"][a:b]
    c = int(np.searchsorted(lo, np.uint64(klo), "left"))
    d = int(np.searchsorted(lo, np.uint64(klo), "right"))
    return a + c + int(np.searchsorted(block["kind"][a + c : a + d], np.uint32(kkind), "right"))


def _key(record: np.void) -> tuple[int, int, int]:
    return int(record["hi"]), int(record["lo"]), int(record["kind"])


def strictly_sorted(block: np.ndarray) -> bool:
    """Whether a block's (hi, lo, kind) keys strictly increase (as a segment's must)."""
    hi, lo, kind = block["hi"], block["lo"], block["kind"]
    h1, h2, l1, l2 = hi[:-1], hi[1:], lo[:-1], lo[1:]
    same_lo = (l2 == l1) & (kind[1:] > kind[:-1])
    return bool(((h2 > h1) | ((h2 == h1) & ((l2 > l1) | same_lo))).all())


class _Run:
    """One merge input: its current block and how far the merge has taken it."""

    def __init__(self, reader: SegmentReader, block_records: int) -> None:
        self.reader = reader
        self.block_records = block_records
        self.next = 0  # the next record of the file to read
        self.buf = np.zeros(0, RECORD_DTYPE)
        self.hi = self.buf["hi"]
        self.pos = 0
        self.last: tuple[int, int, int] | None = None  # the key that ended the previous block

    def fill(self) -> bool:
        """Make sure the run has records to give; False when it is used up."""
        if self.pos < self.buf.size:
            return True
        if self.next >= self.reader.count:
            return False
        n = min(self.block_records, self.reader.count - self.next)
        buf = self.reader.read_into(self.next, np.empty(n, RECORD_DTYPE))
        if not strictly_sorted(buf) or (self.last is not None and _key(buf[0]) <= self.last):
            raise DataError(f"{self.reader.path}: ledger segment is not sorted", REPAIR_HINT)
        self.buf, self.hi, self.pos = buf, np.ascontiguousarray(buf["hi"]), 0
        self.next += n
        self.last = _key(buf[-1])
        return True

    def take_upto(self, key: tuple[int, int, int]) -> np.ndarray:
        """The run's next records with key <= ``key``."""
        cut = count_upto(self.hi, self.buf, key)
        part = self.buf[self.pos : cut]
        self.pos = max(cut, self.pos)
        return part


def merge_segments(
    ledger_dir: Path, segments: list[SegmentRef], *, block_records: int = 1 << 20
) -> SegmentRef:
    """One segment holding ``segments``' records (the same dedup rule: earliest step).

    A streaming k-way merge: about ``block_records`` records of the inputs are in memory
    at once, whatever their size. The output is written to a temporary, hashed, renamed
    to its content address; the inputs are kept (older checkpoints may list them).
    """
    if not segments:
        raise ValueError("merge_segments needs at least one segment")
    ledger_dir = Path(ledger_dir)
    per_input = max(block_records // len(segments), 1)
    temp = _temp_path(ledger_dir)
    try:
        with contextlib.ExitStack() as stack:
            runs = [
                _Run(stack.enter_context(SegmentReader(ledger_dir, ref)), per_input)
                for ref in segments
            ]
            out = stack.enter_context(temp.open("xb"))
            out.write(_header(0))  # the count is known at the end
            total = 0
            while live := [run for run in runs if run.fill()]:
                # every record up to the smallest block end is in memory: emit them, so
                # equal keys from several inputs meet in one batch
                bound = min(run.last for run in live if run.last is not None)
                batch = np.concatenate([run.take_upto(bound) for run in live])
                batch = sorted_records(batch["hi"], batch["lo"], batch["kind"], batch["step"])
                out.write(memoryview(batch).cast("B"))
                total += int(batch.size)
            out.seek(0)
            out.write(_header(total))
            out.flush()
            os.fsync(out.fileno())
        digest = file_sha256(temp)
        if digest is None:
            raise DataError(f"{temp}: cannot read back the merged ledger segment")
        ref = _install(temp, ledger_dir, digest, total)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fault_point("ledger.merge")
    return ref


def plan_merge(segments: list[SegmentRef], *, max_segments: int = 8) -> list[SegmentRef]:
    """The consecutive group of segments (oldest first) to merge now; [] when none is due.

    Due when there are more than ``max_segments``. The group is the oldest segment
    that holds no more records than all the newer ones together, with all of those
    (the newest two when none does; never so few that more than ``max_segments``
    remain). So a large old segment is rewritten only once the small ones after it
    have caught up with it, the sizes stay roughly geometric (largest first), and a
    record is rewritten about log2(runs) times: merging costs ~O(n log n) overall,
    never a large segment rewritten for every small run.
    """
    if max_segments < 2:
        raise ValueError("max_segments must be at least 2")
    n = len(segments)
    if n <= max_segments:
        return []
    counts = np.array([s.count for s in segments], dtype=np.int64)
    newer = np.concatenate([np.cumsum(counts[::-1])[::-1][1:], [0]])  # records after each
    last_start = max_segments - 1  # a later start would leave more than max_segments
    due = np.flatnonzero(counts[:last_start] <= newer[:last_start])
    start = int(due[0]) if due.size else last_start
    return list(segments[start:])
