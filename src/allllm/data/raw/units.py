"""Units of work: the independent parts one source is read in (what many processes share).

- a compressed stream (``.gz``, ``.zst``) is one unit: it can only be read in order;
- a Parquet row group and an Arrow record batch are units (``units=(a, b)`` reads them);
- uncompressed text is split by byte range, each cut just after a document's end: after a
  line end (``line``, JSON lines) or after a run of blank lines (``blank_line``); a ``file``
  document is the whole file, so that is one unit.

Read one after the other, the units of a source give exactly its documents — the same
texts, in the same order — as reading it whole (tests/test_raw_units.py). Finding the cuts
reads a few KB around each target offset, not the file.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from allllm.data.raw.find import RawSource
from allllm.data.raw.pieces import PieceBatch
from allllm.data.raw.split import WS_BYTES

__all__ = ["WorkUnit", "iter_unit", "work_units"]

_LINE_END = re.compile(rb"\n")
_PARA_END = re.compile(rb"\n(?:" + WS_BYTES + rb"*\n)+")
_WINDOW = 64 << 10

UnitKind = Literal["whole", "bytes", "row_groups", "record_batches"]


@dataclass(frozen=True)
class WorkUnit:
    """Part of one source: bytes ``[start, end)``, or row groups / record batches
    ``[start, end)`` of a columnar file, or the whole (compressed) file."""

    source: RawSource
    kind: UnitKind
    start: int
    end: int


def work_units(source: RawSource, *, boundary: str, target_bytes: int = 64 << 20) -> list[WorkUnit]:
    """The units of ``source``: byte ranges of about ``target_bytes`` (text), one unit per
    row group / record batch (Parquet, Arrow), or the whole file (compressed, ``file``)."""
    if target_bytes < 1:
        raise ValueError("target_bytes must be positive")
    if source.columnar:
        from allllm.data.raw.columnar import unit_count

        kind: UnitKind = "row_groups" if source.format == "parquet" else "record_batches"
        return [WorkUnit(source, kind, i, i + 1) for i in range(unit_count(source))]
    if source.compressed or (boundary == "file" and not source.records):
        return [WorkUnit(source, "whole", 0, source.size)]
    pattern = _PARA_END if boundary == "blank_line" and not source.records else _LINE_END
    cuts = [0]
    with open(source.path, "rb") as fh:
        while cuts[-1] + target_bytes < source.size:
            cut = _next_cut(fh, cuts[-1] + target_bytes, source.size, pattern)
            if cut is None or cut >= source.size:
                break
            cuts.append(cut)
    cuts.append(source.size)
    return [WorkUnit(source, "bytes", a, b) for a, b in itertools.pairwise(cuts)]


def _next_cut(fh: Any, at: int, size: int, pattern: re.Pattern[bytes]) -> int | None:
    """The first offset >= ``at`` just after a document end (None: none before the end).

    The search starts one byte early so a line end at ``at - 1`` counts; a match that
    reaches the end of what was read may go on, so it is taken only at the end of file.
    """
    base = max(0, at - 1)
    fh.seek(base)
    buf = b""
    while True:
        block = fh.read(_WINDOW)
        buf += block
        eof = not block or base + len(buf) >= size
        for m in pattern.finditer(buf):
            if base + m.end() < at:
                continue
            if m.end() < len(buf) or eof:
                return base + m.end()
            break
        if eof:
            return None
        keep = buf.rfind(b"\n")  # a match starts at a line end: earlier bytes are done with
        if keep > 0:
            base, buf = base + keep, buf[keep:]


def iter_unit(unit: WorkUnit, **kwargs: Any) -> Iterator[PieceBatch]:
    """The PieceBatches of one unit (``read.iter_batches`` arguments besides the range)."""
    from allllm.data.raw.read import iter_batches

    if unit.kind == "bytes":
        return iter_batches(unit.source, start=unit.start, end=unit.end, **kwargs)
    if unit.kind == "whole":
        return iter_batches(unit.source, **kwargs)
    return iter_batches(unit.source, units=(unit.start, unit.end), **kwargs)
