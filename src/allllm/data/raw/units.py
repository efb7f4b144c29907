"""Units of work: the independent parts one source is read in (what many processes share).

- a compressed stream (``.gz``, ``.zst``) is one unit: it can only be read in order;
- a Parquet or Arrow file is split at its row groups / record batches, a unit being
  consecutive ones, in bytes of the file (``columnar.unit_offsets``);
- uncompressed text is split by byte range, each cut just after a document's end: after a
  line end (``line``, JSON lines) or after a run of blank lines (``blank_line``).

A unit holds at most ``target_bytes``, unless one document (one row group, one record
batch) alone is bigger. A document of plain text (not a JSON record) that is bigger is cut
inside, at a safe point of the encoder's ``cut_rule`` (where encoding the two parts gives
the ids of the whole; the next character not whitespace, so no part reads as blank) found
in the last ``SAFE_SEARCH_BYTES`` before the target: such a unit is ``open_start`` /
``open_end`` — it continues a document of the unit before / after it. Without a rule
(SentencePiece), in JSON records, row groups and compressed streams, or with no safe point
there, the document is one unit of its own, never cut. The cuts are made from
byte 0 of the file, greedily (each the last one within ``target_bytes`` of the one
before), and a range ``[start, end)`` uses those inside it, so the units of a range
are always those of the whole file there: they depend only on the file's bytes.

Read one after the other, the units of a source give exactly its documents — the same
texts, in the same order — as reading it whole (tests/test_raw_units.py). Finding the cuts
reads a few KB around each target offset, not the file (a document longer than that
window is read back to its start).
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from allllm.data.raw.find import RawSource
from allllm.data.raw.pieces import PieceBatch
from allllm.data.raw.split import WS_BYTES
from allllm.errors import DataError

if TYPE_CHECKING:
    from allllm.tokenizer.base import CutRule

__all__ = ["SAFE_SEARCH_BYTES", "WorkUnit", "iter_unit", "work_units"]

_LINE_END = re.compile(rb"\n")
_PARA_END = re.compile(rb"\n(?:" + WS_BYTES + rb"*\n)+")
_WINDOW = 64 << 10
#: how far before its target a cut inside a document is looked for (then: the whole document)
SAFE_SEARCH_BYTES = 1 << 20

UnitKind = Literal["whole", "bytes", "row_groups", "record_batches"]


@dataclass(frozen=True)
class WorkUnit:
    """Part of one source: bytes ``[start, end)``, or row groups / record batches
    ``[start, end)`` of a columnar file, or the whole (compressed) file."""

    source: RawSource
    kind: UnitKind
    start: int
    end: int
    open_start: bool = False  # ``start`` is inside a document (a cut at a safe point)
    open_end: bool = False  # ``end`` is inside a document


def work_units(
    source: RawSource,
    *,
    boundary: str,
    target_bytes: int = 64 << 20,
    start: int = 0,
    end: int | None = None,
    cut_rule: CutRule | None = None,
) -> list[WorkUnit]:
    """The units covering bytes ``[start, end)`` of ``source`` (``end``: its size when None),
    each of at most ``target_bytes`` but for a single bigger document (see the module
    docstring): byte ranges, or the whole file for a compressed source. ``cut_rule``: the
    tokenizer's, to cut inside documents bigger than ``target_bytes``."""
    size = source.size
    end = size if end is None else end
    if target_bytes < 1:
        raise ValueError("target_bytes must be positive")
    if not 0 <= start <= end <= size:
        raise ValueError(f"bad byte range start={start} end={end} of {size} bytes")
    if source.compressed:
        if (start, end) != (0, size):
            raise ValueError(f"{source.display}: a compressed source is one unit, read whole")
        return [WorkUnit(source, "whole", 0, size)]
    if start == end:
        return []
    if source.columnar:
        from allllm.data.raw.columnar import unit_offsets

        offsets = unit_offsets(source)
        if not {start, end} <= {0, *offsets, size}:
            raise ValueError(f"{source.display}: [{start}, {end}) is not a range of whole units")
        cuts, safe = _group(sorted({*offsets[1:], size}), target_bytes, end), set()
    else:
        pattern = _doc_end_pattern(source, boundary)
        rule = None if source.records else cut_rule
        cuts, safe = _text_cuts(source, pattern, target_bytes, end, rule)
    inside = [c for c in cuts if start < c < end]
    edges = [start, *inside, end]
    return [
        WorkUnit(source, "bytes", a, b, a in safe, b in safe) for a, b in itertools.pairwise(edges)
    ]


def _doc_end_pattern(source: RawSource, boundary: str) -> re.Pattern[bytes] | None:
    """What ends a document in ``source``'s bytes (None: only the end of the file)."""
    if source.records or boundary == "line":
        return _LINE_END
    return _PARA_END if boundary == "blank_line" else None


def _group(candidates: list[int], target: int, until: int) -> list[int]:
    """Cuts from 0, each the last candidate within ``target`` of the one before (else the next
    candidate), up to ``until``; ``candidates`` sorted, the file's size the last."""
    cuts = [0]
    while cuts[-1] < until and candidates:
        k = bisect.bisect_right(candidates, cuts[-1] + target) - 1
        if k < 0 or candidates[k] <= cuts[-1]:
            k = bisect.bisect_right(candidates, cuts[-1])
        if k >= len(candidates):
            break
        cuts.append(candidates[k])
    return cuts


def _text_cuts(
    source: RawSource,
    pattern: re.Pattern[bytes] | None,
    target: int,
    until: int,
    rule: CutRule | None,
) -> tuple[list[int], set[int]]:
    """Cuts just after document ends from 0, each the last one within ``target`` bytes of
    the one before, else a safe point inside the document (``rule``), else the first
    document end after it (a bigger document), up to ``until``; and which cuts are inside
    a document (safe points)."""
    size = source.size
    cuts = [0]
    safe: set[int] = set()
    try:
        with open(source.path, "rb") as fh:
            while cuts[-1] < until and cuts[-1] + target < size:
                at = cuts[-1] + target
                cut = None if pattern is None else _last_cut(fh, cuts[-1], at, size, pattern)
                if cut is None and rule is not None:
                    cut = _safe_cut(fh, cuts[-1], at, size, rule)
                    if cut is not None:
                        safe.add(cut)
                if cut is None:
                    cut = None if pattern is None else _next_cut(fh, at, size, pattern)
                if cut is None or cut >= size:
                    break
                cuts.append(cut)
    except OSError as exc:
        raise DataError(f"{source.display}: cannot read: {exc.strerror}") from None
    return cuts, safe


def _last_cut(fh: Any, lo: int, at: int, size: int, pattern: re.Pattern[bytes]) -> int | None:
    """The last offset in ``(lo, at]`` just after a document end (None: there is none).

    Windows are read backwards from ``at``, each a little past its end so a blank-line run
    that reaches ``at`` is seen whole; a match that reaches the end of what was read may
    go on, so it counts only at the end of the file.
    """
    hi = at
    while hi > lo:
        base = max(lo, hi - _WINDOW)
        fh.seek(base)
        buf = fh.read(min(size, hi + _WINDOW) - base)
        eof = base + len(buf) >= size
        best = None
        for m in pattern.finditer(buf):
            if base + m.end() > at:
                break
            if base + m.end() > lo and (m.end() < len(buf) or eof):
                best = base + m.end()
        if best is not None:
            return best
        hi = base
    return None


def _safe_cut(fh: Any, lo: int, at: int, size: int, rule: CutRule) -> int | None:
    """The last offset in ``(lo, at]`` (no more than ``SAFE_SEARCH_BYTES`` before ``at``)
    where ``rule`` may cut the text and the next character is not whitespace (None: none).

    The window is decoded from a character's start; bytes that are not UTF-8 decode one
    character each (surrogate escapes), so every character maps back to its bytes.
    """
    floor = max(lo, at - SAFE_SEARCH_BYTES)
    hi = at
    while hi > floor:
        base = max(floor, hi - _WINDOW)
        fh.seek(base)
        buf = fh.read(min(size, hi + 8) - base)  # a few bytes on: the character after a cut
        skip = 0
        while skip < len(buf) and buf[skip] & 0xC0 == 0x80:  # start on a character
            skip += 1
        top = hi - base
        while top > skip and top < len(buf) and buf[top] & 0xC0 == 0x80:
            top -= 1
        text = buf[skip:].decode("utf-8", "surrogateescape")
        limit = len(buf[skip:top].decode("utf-8", "surrogateescape"))
        while limit > 0:
            p = rule.last_cut(text, 0, limit)
            if p < 0:
                break
            if text[p].isspace():
                limit = p - 1
                continue
            if text[:p].isspace():  # so is every shorter prefix: nothing before p either
                break
            return base + skip + len(text[:p].encode("utf-8", "surrogateescape"))
        hi = base
    return None


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
        buf = (buf + block)[: size - base]  # never past the listed size (a file may grow)
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
