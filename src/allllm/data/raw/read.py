"""Read the sources of ``data.raw_path``: stream their documents, hash and identify them.

``iter_pieces`` streams one source (a ``RawSource`` from ``find``) as documents
(docs/design.md: tokens, documents, rows) in pieces of bounded size with exact byte offsets, so ``allllm
tokenize`` can tokenize appended bytes on their own and a progress bar can count
bytes. ``iter_batches`` is the same stream as parallel lists, for consumers that
need speed more than per-piece objects. ``source_sha256`` and ``source_identity``
recognize a source again across runs. The splitting itself is ``split``'s job;
this module checks the arguments and shapes its output.

Input: ``.txt``, ``.jsonl`` and ``.json`` (JSON lines), each plain or compressed
(``.gz``, ``.zst``, ``.zstd``), any case, UTF-8 (a leading BOM is dropped); and
Parquet and Arrow files (``columnar``). Documents per ``data.document_boundary``:

- ``file``: the whole file, as-is (``\\r\\n`` kept);
- ``line``: each line, without its ``\\n`` / ``\\r\\n``;
- ``blank_line``: paragraphs separated by one or more blank (whitespace-only)
  lines, their lines joined with ``\\n``, without a trailing newline;
- JSON lines, Parquet, Arrow: one record a document (its ``data.text_field``),
  whatever the boundary; a record over ``max_record_bytes``
  (``data.max_document_bytes``) is an error.

Documents that are empty or only whitespace are skipped (records: counted in
``PieceBatch.skipped``); so are blank lines of a JSON lines file. "Whitespace" is what ``str.isspace`` says. Only ``\\n`` and
``\\r\\n`` end lines (a lone ``\\r``, form feed or U+2028 does not).

Memory stays bounded whatever the input (see ``split``). One pathological
case costs time instead: a whitespace run of more than 4 chunks whose document
turns out to have text is read twice (for a ``.gz`` by decompressing again from
the start).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from allllm.data.raw.find import RawSource, path_identity, resolve_sources
from allllm.data.raw.pieces import PieceBatch, TextPiece
from allllm.data.raw.split import SourceSplitter
from allllm.errors import DataError

if TYPE_CHECKING:
    from allllm.config import DataConfig

__all__ = [
    "iter_batches",
    "iter_documents",
    "iter_pieces",
    "iter_texts",
    "source_identity",
    "source_sha256",
]

BOUNDARIES = ("file", "blank_line", "line")


# -- reading ------------------------------------------------------------------------------------


def iter_batches(
    source: RawSource,
    *,
    boundary: str,
    text_field: str = "text",
    on_decode_error: str = "error",
    chunk_bytes: int = 1 << 20,
    start: int = 0,
    end: int | None = None,
    max_record_bytes: int = 1 << 30,
    units: tuple[int, int] | None = None,
) -> Iterator[PieceBatch]:
    """The pieces of ``iter_pieces`` as ``PieceBatch`` lists (same arguments and errors).

    No object per piece: several times faster than ``iter_pieces`` for many short
    documents (``line`` mode), so bulk consumers should prefer it. ``units`` reads only
    row groups (Parquet) or record batches (Arrow) ``[a, b)`` of a columnar source; so
    does a byte range there: ``start``/``end`` must then be unit offsets
    (``columnar.unit_offsets``) or the file's size, and the units starting in
    ``[start, end)`` are read (any other range is a ValueError naming the offsets).
    """
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    if on_decode_error not in ("error", "replace"):
        raise ValueError(f"on_decode_error must be 'error' or 'replace', got {on_decode_error!r}")
    if chunk_bytes < 1 or max_record_bytes < 1:
        raise ValueError("chunk_bytes and max_record_bytes must be positive")
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"bad byte range start={start} end={end}")
    ranged = bool(start) or end is not None
    if source.compressed and ranged:
        raise DataError(
            f"{source.display}: a byte range of a compressed file cannot be read",
            "it is read whole; to append text, use an uncompressed .txt or .jsonl",
        )
    if units is not None and not source.columnar:
        raise ValueError("units name row groups or record batches: Parquet and Arrow only")
    if source.columnar:
        from allllm.data.raw.columnar import ColumnarSplitter, units_of_range

        if ranged:
            if units is not None:
                raise ValueError("give units or a byte range (start, end), not both")
            units = units_of_range(source, start, end)
        return ColumnarSplitter(
            source,
            text_field=text_field,
            on_decode_error=on_decode_error,
            chunk_bytes=chunk_bytes,
            max_record_bytes=max_record_bytes,
            units=units,
        ).batches()
    splitter = SourceSplitter(
        source,
        boundary=boundary,
        text_field=text_field,
        on_decode_error=on_decode_error,
        chunk_bytes=chunk_bytes,
        start=start,
        end=end,
        max_record_bytes=max_record_bytes,
    )
    return splitter.batches()


def iter_pieces(
    source: RawSource,
    *,
    boundary: str,
    text_field: str = "text",
    on_decode_error: str = "error",
    chunk_bytes: int = 1 << 20,
    start: int = 0,
    end: int | None = None,
    max_record_bytes: int = 1 << 30,
    units: tuple[int, int] | None = None,
) -> Iterator[TextPiece]:
    """Stream ``source`` as documents, each in one or more pieces of bounded size.

    A piece holds at most about ``chunk_bytes`` bytes of input (a few more, since a
    character is never split); a longer document comes in several pieces cut at
    arbitrary character boundaries — the consumer decides where ids may be cut;
    ``"".join`` of a document's piece texts is the document. ``start``/``end`` read
    only that byte range of an uncompressed file, as if the file began and ended there
    (a BOM is dropped only at byte 0); of a Parquet or Arrow file, the row groups or
    record batches that start in it (``iter_batches``); for a ``.gz`` any range is a
    DataError.

    When the range holds any document, the pieces' byte ranges tile it exactly: the
    first starts at ``start``, each next one where the previous ended, the last ends
    at ``end`` (or the end of the file); skipped bytes count to the next document, or
    after the last document to the last one.

    Errors (DataError, one line each): invalid UTF-8 with ``on_decode_error="error"``
    (file and byte offset; with ``"replace"`` bad bytes become U+FFFD); a ``.jsonl``
    line that is not JSON, not an object, lacks ``text_field`` or holds a non-string
    there (file, line and byte offset), or is longer than ``max_record_bytes``; a
    file that is shorter than ``end`` or a broken ``.gz``.
    """
    for batch in iter_batches(
        source,
        boundary=boundary,
        text_field=text_field,
        on_decode_error=on_decode_error,
        chunk_bytes=chunk_bytes,
        start=start,
        end=end,
        max_record_bytes=max_record_bytes,
        units=units,
    ):
        at = batch.start
        starts = batch.doc_starts
        nxt = [*starts[1:], not batch.open]  # the next piece starts a document: this one ends
        for text, piece_end, first, last in zip(batch.texts, batch.ends, starts, nxt):
            yield TextPiece(text, first, last, at, piece_end)
            at = piece_end


def iter_documents(source: RawSource, **kwargs: object) -> Iterator[str]:
    """Whole documents of ``source`` (``iter_pieces`` joined; same arguments).

    Memory grows with the longest document: only for tests and small inputs, never
    for a pipeline that must survive a multi-GB line.
    """
    parts: list[str] = []
    for piece in iter_pieces(source, **kwargs):  # type: ignore[arg-type]
        if piece.doc_start:
            parts = []
        parts.append(piece.text)
        if piece.doc_end:
            yield "".join(parts)


def iter_texts(
    data_cfg: DataConfig, sources: list[RawSource] | None = None, chunk_bytes: int = 1 << 20
) -> Iterator[str]:
    """Every piece's text of every source, for tokenizer training (documents in bounded pieces)."""
    if sources is None:
        sources = resolve_sources(data_cfg.raw_paths)
    for source in sources:
        for batch in iter_batches(
            source,
            boundary=data_cfg.document_boundary,
            text_field=data_cfg.text_field,
            on_decode_error=data_cfg.on_decode_error,
            chunk_bytes=chunk_bytes,
            max_record_bytes=data_cfg.max_document_bytes,
        ):
            yield from batch.texts


def source_sha256(source: RawSource, end: int | None = None) -> str:
    """sha256 of the file's bytes on disk ``[0, end)`` (the whole file if ``end`` is None).

    A file shorter than ``end`` is a DataError: it was truncated or replaced.
    """
    h = hashlib.sha256()
    done = 0
    try:
        with open(source.path, "rb") as fh:
            while end is None or done < end:
                block = fh.read(1 << 20 if end is None else min(1 << 20, end - done))
                if not block:
                    break
                h.update(block)
                done += len(block)
    except OSError as exc:
        raise DataError(f"{source.display}: cannot read: {exc.strerror}") from None
    if end is not None and done < end:
        raise DataError(
            f"{source.display}: has {done} bytes, fewer than the {end} expected",
            "it was truncated or replaced; tokenize it again from the start (allllm tokenize "
            "--force)",
        )
    return h.hexdigest()


def source_identity(source: RawSource) -> str:
    """Who ``source`` is across runs and spellings (``find.path_identity``)."""
    return path_identity(source.path)
