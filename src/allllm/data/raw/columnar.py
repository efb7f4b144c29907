"""Read Parquet and Arrow sources: one document a record, from the ``data.text_field`` column.

Parquet (FineWeb, FineWeb-Edu) is streamed record batch by record batch with
pyarrow (``iter_batches``, ``pre_buffer=False``, a read buffer), reading only the
text column, so memory stays bounded also for a 2 GB file written as one row
group. Arrow IPC files (``datasets``' ``save_to_disk`` writes the *stream*
format; ``.arrow`` files may also be in the *file* format, magic ``ARROW1``) are
memory-mapped, so a record batch costs only the pages of its text column.

Offsets: the pieces of a columnar source count records, not bytes — record ``i``
covers ``[i, i + 1)``. A unit of work is a row group (Parquet) or a record batch
(Arrow), and each has a byte range of the file (``unit_offsets``: a row group from
its first column chunk's first page, a record batch from the end of the one before;
the first unit from byte 0, the last to the end of the file), so meta's
``byte_range`` means file bytes here too. ``units`` reads a range of units by index,
``read.iter_batches(start=, end=)`` by those byte offsets; ``read_bytes`` is the
byte offset reached (inside a unit, its share of the unit's rows or bytes), for
progress bars. pyarrow is imported here only, when a columnar source is read.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

from allllm.data.raw.byte_stream import DECODE_HINT
from allllm.data.raw.pieces import BatchBuilder, PieceBatch
from allllm.errors import DataError

ARROW_FILE_MAGIC = b"ARROW1"
READ_BUFFER_BYTES = 1 << 20  # pyarrow's buffered read of one column chunk


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.compute
        import pyarrow.ipc
        import pyarrow.parquet  # the submodules register on pa
    except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
        raise DataError(
            "reading Parquet or Arrow needs pyarrow, which is not installed",
            "pip install pyarrow",
        ) from None
    return pa


def _arrow_errors() -> tuple[type[BaseException], ...]:
    pa = _pyarrow()
    return (pa.ArrowException, OSError, ValueError)


class ColumnarSplitter:
    """Yields the PieceBatches of one Parquet or Arrow source (see the module docstring)."""

    def __init__(
        self,
        source: Any,  # a RawSource of format "parquet" or "arrow"
        *,
        text_field: str,
        on_decode_error: str,
        chunk_bytes: int,
        max_record_bytes: int,
        units: tuple[int, int] | None = None,
    ) -> None:
        self.source = source
        self.display = source.display
        self.field = text_field
        self.replace = on_decode_error == "replace"
        self.chunk, self.max_record = chunk_bytes, max_record_bytes
        self.units = units

    # -- opening -----------------------------------------------------------------------------------
    def _missing(self, names: list[str]) -> DataError:
        have = ", ".join(repr(n) for n in names[:12]) or "no columns"
        more = f" and {len(names) - 12} more" if len(names) > 12 else ""
        return DataError(
            f"{self.display}: no column {self.field!r} (the file has {have}{more})",
            "set data.text_field to the column that holds the text",
        )

    def _broken(self, what: str, exc: BaseException) -> DataError:
        kind = "Parquet" if self.source.format == "parquet" else "Arrow IPC"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return DataError(
            f"{self.display}: broken {kind} data {what} ({detail})",
            "the file is truncated or corrupt: download or write it again",
        )

    def batches(self) -> Iterator[PieceBatch]:
        if self.source.format == "parquet":
            yield from self._parquet()
        else:
            yield from self._arrow()

    # -- Parquet -----------------------------------------------------------------------------------
    def _parquet(self) -> Iterator[PieceBatch]:
        pa = _pyarrow()
        errors = _arrow_errors()
        try:
            pf = pa.parquet.ParquetFile(
                self.source.path, buffer_size=READ_BUFFER_BYTES, pre_buffer=False
            )
        except errors as exc:
            raise self._broken("at its footer", exc) from None
        try:
            names = pf.schema_arrow.names
            if self.field not in names:
                raise self._missing(names)
            col = names.index(self.field)
            self._check_type(pf.schema_arrow.field(col).type)
            meta = pf.metadata
            groups = range(meta.num_row_groups)
            if self.units is not None:
                groups = groups[self.units[0] : self.units[1]]
            rows_before = [0]
            for g in range(meta.num_row_groups):
                rows_before.append(rows_before[-1] + meta.row_group(g).num_rows)
            ends = [*_parquet_offsets(meta)[1:], self.source.size]  # byte where group g ends
            first = groups[0] if len(groups) else 0
            b = BatchBuilder(rows_before[first], 0, _no_reread)
            for g in groups:
                rg = meta.row_group(g)
                column = rg.column(_leaf_index(pf, self.field))
                per_row = max(1, column.total_uncompressed_size // max(1, rg.num_rows))
                # about chunk_bytes of text a batch, as the text readers hand on: bigger
                # batches made slower encoder calls and more memory in flight (benchmarks)
                rows = max(1, min(65_536, self.chunk // per_row))
                at = rows_before[g]
                lo, n = ends[g - 1] if g else 0, max(1, rg.num_rows)
                where = f"in row group {g}"
                try:
                    for rb in pf.iter_batches(
                        batch_size=rows, row_groups=[g], columns=[self.field], use_threads=False
                    ):
                        self._add(b, rb.column(0), at)
                        at += rb.num_rows
                        batch = b.flush(lo + (ends[g] - lo) * (at - rows_before[g]) // n)
                        if batch is not None:
                            yield batch
                except errors as exc:
                    raise self._broken(where, exc) from None
            b.close()
            done = ends[groups[-1]] if len(groups) else self.source.size
            last = b.flush(done, final_end=rows_before[groups[-1] + 1] if len(groups) else 0)
            if last is not None:
                yield last
        finally:
            pf.close()

    # -- Arrow IPC ---------------------------------------------------------------------------------
    def _arrow(self) -> Iterator[PieceBatch]:
        pa = _pyarrow()
        errors = _arrow_errors()
        try:
            mm = pa.memory_map(str(self.source.path), "r")
        except errors as exc:
            raise DataError(f"{self.display}: cannot read: {exc}") from None
        try:
            is_file = mm.read(len(ARROW_FILE_MAGIC)) == ARROW_FILE_MAGIC
            mm.seek(0)
            try:
                reader = pa.ipc.open_file(mm) if is_file else pa.ipc.open_stream(mm)
            except errors as exc:
                raise self._broken("at its schema", exc) from None
            names = reader.schema.names
            if self.field not in names:
                raise self._missing(names)
            col = names.index(self.field)
            self._check_type(reader.schema.field(col).type)
            ends = [*unit_offsets(self.source)[1:], self.source.size]  # where batch i ends
            lo, hi = self.units if self.units is not None else (0, None)
            b = BatchBuilder(0, 0, _no_reread)
            at = 0
            for index, rb in enumerate(_record_batches(reader, is_file, errors, self)):
                if hi is not None and index >= hi:
                    break
                if index < lo:
                    at += rb.num_rows  # zero-copy: a skipped batch's text is never read
                    b.batch_start = b.covered = at
                    continue
                self._add(b, rb.column(col), at)
                at += rb.num_rows
                batch = b.flush(ends[min(index, len(ends) - 1)])
                if batch is not None:
                    yield batch
            b.close()
            stop = ends[hi - 1] if hi is not None and 0 < hi < len(ends) else self.source.size
            last = b.flush(stop, final_end=at)
            if last is not None:
                yield last
        finally:
            mm.close()

    # -- one column of records -------------------------------------------------------------------
    def _check_type(self, arrow_type: Any) -> None:
        pa = _pyarrow()
        t = pa.types
        ok = t.is_string(arrow_type) or t.is_large_string(arrow_type)
        ok = ok or (hasattr(t, "is_string_view") and t.is_string_view(arrow_type))
        if t.is_dictionary(arrow_type):
            ok = t.is_string(arrow_type.value_type) or t.is_large_string(arrow_type.value_type)
        if not ok:
            raise DataError(
                f"{self.display}: column {self.field!r} is {arrow_type}, not a string",
                "set data.text_field to the column that holds the text",
            )

    def _add(self, b: BatchBuilder, column: Any, first_row: int) -> None:
        """The records of one column chunk: whole documents, or pieces for long ones."""
        pa = _pyarrow()
        pc = pa.compute
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if column.null_count:
            k = column.is_null().to_pylist().index(True)
            raise DataError(
                f"{self.display}: record {first_row + k + 1}: column {self.field!r} is null, "
                "not a string",
                "drop or fill the null records",
            )
        lengths = pc.binary_length(column)
        longest = pc.max(lengths).as_py() or 0
        if longest > self.max_record:
            k = pc.index(lengths, longest).as_py()
            raise DataError(
                f"{self.display}: record {first_row + k + 1} is {longest:,} bytes, longer than "
                f"data.max_document_bytes ({self.max_record:,})",
                "raise data.max_document_bytes, or split the record",
            )
        try:
            values: list[str] = column.to_pylist()
        except UnicodeDecodeError:
            values = self._decode_each(column, first_row)
        texts: list[str] = []
        ends: list[int] = []
        skipped = 0
        small = self.chunk // 4  # at most 4 bytes a character
        for i, value in enumerate(values, first_row + 1):
            if not value or value.isspace():
                skipped += 1
                continue
            if len(value) <= small or len(value.encode("utf-8")) <= self.chunk:
                texts.append(value)
                ends.append(i)
            else:
                b.whole(texts, ends)
                texts, ends = [], []
                b.big(value, i, self.chunk)
        b.whole(texts, ends)
        b.covered = first_row + len(values)
        b.skipped += skipped

    def _decode_each(self, column: Any, first_row: int) -> list[str]:
        """Values one by one (the column holds invalid UTF-8): replaced, or an error naming it."""
        out = []
        for k in range(len(column)):
            raw = column[k].as_buffer().to_pybytes()
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                if not self.replace:
                    raise DataError(
                        f"{self.display}: record {first_row + k + 1}: invalid UTF-8 at byte "
                        f"{exc.start} of column {self.field!r}",
                        DECODE_HINT,
                    ) from None
                out.append(raw.decode("utf-8", "replace"))
        return out


def _leaf_index(pf: Any, name: str) -> int:
    """The Parquet leaf column of a top-level string field (for its size in the metadata)."""
    schema = pf.metadata.schema
    for i in range(len(schema)):
        if schema.column(i).path == name:
            return i
    return 0


def _record_batches(
    reader: Any, is_file: bool, errors: tuple[type[BaseException], ...], owner: ColumnarSplitter
) -> Iterator[Any]:
    if is_file:
        for i in range(reader.num_record_batches):
            try:
                yield reader.get_batch(i)
            except errors as exc:
                raise owner._broken(f"in record batch {i}", exc) from None
        return
    index = 0
    while True:
        try:
            rb = reader.read_next_batch()
        except StopIteration:
            return
        except errors as exc:
            raise owner._broken(f"in record batch {index}", exc) from None
        yield rb
        index += 1


def _no_reread(a: int, b: int) -> Iterator[tuple[str, int]]:  # pragma: no cover - never called
    raise AssertionError("columnar sources hold no whitespace runs of open fate")


def unit_count(source: Any) -> int:
    """Row groups of a Parquet file, record batches of an Arrow file (``unit_offsets``)."""
    return len(unit_offsets(source))


def unit_offsets(source: Any) -> list[int]:
    """The byte offset where each unit (row group, record batch) of ``source`` starts.

    Unit ``i`` covers ``[offsets[i], offsets[i + 1])``, the last one up to ``source.size``;
    the first starts at 0 (the file's header is its). Parquet: a row group starts at the
    first page (dictionary or data) of its column chunks, from the footer. Arrow: the IPC
    messages are read in order from the memory-mapped file (headers; bodies are not
    touched), and a record batch's unit starts where the record batch before it ended
    (a dictionary message between them belongs to the later one).
    """
    pa = _pyarrow()
    errors = _arrow_errors()
    splitter = ColumnarSplitter(
        source, text_field="", on_decode_error="error", chunk_bytes=1, max_record_bytes=1
    )
    if source.format == "parquet":
        try:
            return _parquet_offsets(pa.parquet.ParquetFile(source.path).metadata)
        except errors as exc:
            raise splitter._broken("at its footer", exc) from None
    offsets: list[int] = []
    with pa.memory_map(str(source.path), "r") as mm:
        is_file = mm.read(len(ARROW_FILE_MAGIC)) == ARROW_FILE_MAGIC
        mm.seek(8 if is_file else 0)  # the file format: magic and padding, then a stream
        nxt = 0  # where the next record batch's unit starts
        try:
            messages = pa.ipc.MessageReader.open_stream(mm)
            while True:
                try:
                    message = messages.read_next_message()
                except StopIteration:
                    break
                if message is None:
                    break
                if message.type == "record batch":
                    offsets.append(nxt)
                    nxt = mm.tell()
        except errors as exc:
            raise splitter._broken(f"in record batch {len(offsets)}", exc) from None
    return offsets


def _parquet_offsets(meta: Any) -> list[int]:
    offsets: list[int] = []
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        starts = []
        for c in range(rg.num_columns):
            chunk = rg.column(c)
            starts.append(chunk.data_page_offset)
            if chunk.has_dictionary_page and chunk.dictionary_page_offset:
                starts.append(chunk.dictionary_page_offset)
        prev = offsets[-1] if offsets else 0
        offsets.append(0 if g == 0 else max(prev, min(starts, default=prev)))
    return offsets


def units_of_range(source: Any, start: int, end: int | None) -> tuple[int, int]:
    """The units ``[a, b)`` whose start offset lies in bytes ``[start, end)`` (``end``: the
    file's size when None); both must be unit offsets or the size, else a ValueError."""
    offsets = unit_offsets(source)
    end = source.size if end is None else end
    valid = {0, *offsets, source.size}
    if start not in valid or end not in valid:
        shown = ", ".join(map(str, sorted(valid)[:20])) + (", ..." if len(valid) > 20 else "")
        raise ValueError(
            f"{source.display}: byte range [{start}, {end}) does not start and end where a "
            f"{'row group' if source.format == 'parquet' else 'record batch'} does "
            f"(offsets: {shown})"
        )
    return bisect.bisect_left(offsets, start), bisect.bisect_left(offsets, end)
