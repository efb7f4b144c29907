"""allllm's one raw-text reader: find the sources of ``data.raw_path`` and stream their documents.

``resolve_sources`` turns the config's paths (files, folders, globs, or a list of
them) into a deterministic list of ``RawSource``; ``iter_pieces`` streams one
source as documents (DESIGN.md §3) in pieces of bounded size with exact byte
offsets, so ``allllm tokenize`` can tokenize appended bytes on their own and a
progress bar can count bytes. ``iter_batches`` is the same stream as parallel
lists, for consumers that need speed more than per-piece objects.

Input: ``.txt``, ``.txt.gz``, ``.jsonl`` and ``.jsonl.gz`` (any case), UTF-8; a
leading BOM is dropped. Documents per ``data.document_boundary``:

- ``file``: the whole file, as-is (``\\r\\n`` kept);
- ``line``: each line, without its ``\\n`` / ``\\r\\n``;
- ``blank_line``: paragraphs separated by one or more blank (whitespace-only)
  lines, their lines joined with ``\\n``, without a trailing newline;
- ``.jsonl``: one record a document (its ``data.text_field``), whatever the boundary.

Documents that are empty or only whitespace are skipped; so are blank lines of a
``.jsonl`` file. "Whitespace" is what ``str.isspace`` says. Only ``\\n`` and
``\\r\\n`` end lines (a lone ``\\r``, form feed or U+2028 does not).

Memory stays bounded whatever the input (see ``raw_split``). One pathological
case costs time instead: a whitespace run of more than 4 chunks whose document
turns out to have text is read twice (for a ``.gz`` by decompressing again from
the start).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from allllm.data.raw.split import PieceBatch, SourceSplitter
from allllm.data.shard_format import parse_shard_name
from allllm.errors import DataError

if TYPE_CHECKING:
    from allllm.config import DataConfig

__all__ = [
    "SUFFIXES",
    "PieceBatch",
    "RawSource",
    "TextPiece",
    "iter_batches",
    "iter_documents",
    "iter_pieces",
    "iter_texts",
    "resolve_sources",
    "source_identity",
    "source_kind",
    "source_sha256",
]

log = logging.getLogger(__name__)

# suffix -> (format, compressed); the .gz ones first so they win
SUFFIXES: dict[str, tuple[Literal["txt", "jsonl"], bool]] = {
    ".txt.gz": ("txt", True),
    ".jsonl.gz": ("jsonl", True),
    ".txt": ("txt", False),
    ".jsonl": ("jsonl", False),
}
_KNOWN = ".txt, .txt.gz, .jsonl or .jsonl.gz"
BOUNDARIES = ("file", "blank_line", "line")
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class RawSource:
    """One raw input file."""

    path: Path  # as found (relative to the current directory if it was given relative)
    size: int  # bytes on disk (compressed size for .gz)
    format: Literal["txt", "jsonl"]
    compressed: bool  # .gz

    @property
    def display(self) -> str:
        """Short path for messages: relative to the current directory where possible."""
        if self.path.is_absolute():
            try:
                return str(self.path.relative_to(Path.cwd()))
            except ValueError:
                pass
        return str(self.path)


@dataclass(frozen=True)
class TextPiece:
    """Part of one document, with the bytes it came from.

    ``start``/``end`` are offsets in the source's byte stream (the file itself, or
    the decompressed stream of a ``.gz``). A source's pieces tile the range read:
    each starts where the one before it ends, skipped bytes (blank lines,
    whitespace-only documents, line ends) count to a neighbouring document.
    """

    text: str
    doc_start: bool  # first piece of a document
    doc_end: bool  # last piece of a document
    start: int
    end: int


def source_kind(name: str) -> tuple[Literal["txt", "jsonl"], bool] | None:
    """``(format, compressed)`` for a file name, or None if it is not raw input."""
    low = name.lower()
    for suffix, kind in SUFFIXES.items():
        if low.endswith(suffix):
            return kind
    return None


# -- finding the sources ------------------------------------------------------------------------


class _Resolver:
    """Collects sources in order, once each, and what was skipped (for one summary warning)."""

    def __init__(self, warn: Callable[[str], None], label: str = "data.raw_path") -> None:
        self.warn = warn
        self.label = label  # how errors name the paths: the config key or a CLI option
        self.sources: list[RawSource] = []
        self.seen: set[str] = set()  # resolved file paths listed
        self.walked: set[tuple[int, int]] = set()  # (device, inode) of folders walked
        self.other: Counter[str] = Counter()  # skipped files by suffix
        self.shards = 0
        self.empty = 0

    def entry(self, raw: str) -> None:
        text = os.path.expanduser(raw)
        path = Path(text)
        if path.is_symlink() and not path.exists():
            raise DataError(
                f"{self.label} {raw!r}: a broken symlink (or a symlink loop)",
                "point it at a file or folder that exists",
            )
        if path.exists():
            found = [path]
        elif _GLOB_CHARS & set(text):
            import glob

            found = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            if not found:
                raise DataError(
                    f"{self.label} {raw!r}: the pattern matches nothing",
                    f"check the pattern (relative paths start at {Path.cwd()})",
                )
        else:
            raise DataError(
                f"{self.label} {raw!r}: no such file or folder",
                f"create it or fix {self.label} (relative paths start at {Path.cwd()})",
            )
        explicit = len(found) == 1 and found[0] == path
        for p in found:
            if p.is_dir():
                self.walk(p)
            else:
                self.file(p, explicit=explicit)

    def walk(self, root: Path) -> None:
        """Every file under ``root``, sorted by path; symlinks followed, loops reported."""
        st = _stat(root, self.warn)
        if st is None or (st.st_dev, st.st_ino) in self.walked:
            return
        key = (st.st_dev, st.st_ino)
        self.walked.add(key)
        # depth first in name order; an entry is (path, None) for a file or (path, ancestors)
        stack: list[tuple[Path, frozenset[tuple[int, int]] | None]] = [(root, frozenset([key]))]
        while stack:
            folder, ancestors = stack.pop()
            if ancestors is None:
                self.file(folder, explicit=False)
                continue
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                self.warn(f"{folder}: cannot list this folder ({exc.strerror}), skipped")
                continue
            children: list[tuple[Path, frozenset[tuple[int, int]] | None]] = []
            for e in entries:
                if e.name.startswith("."):
                    continue  # hidden: .git, .allllm, editor and OS files
                p = folder / e.name
                try:
                    is_dir, is_file = e.is_dir(), e.is_file()
                except OSError as exc:  # ELOOP for a link to itself
                    what = "broken symlink or symlink loop" if e.is_symlink() else "cannot read"
                    self.warn(f"{p}: {what} ({exc.strerror}), skipped")
                    continue
                if is_dir:
                    sub = _stat(p, self.warn)
                    if sub is None:
                        continue
                    key = (sub.st_dev, sub.st_ino)
                    if key in ancestors:
                        self.warn(
                            f"{p}: symlink loop (leads back to {os.path.realpath(p)}), skipped"
                        )
                    elif key not in self.walked:  # else: reached before by another path
                        self.walked.add(key)
                        children.append((p, ancestors | {key}))
                elif is_file:
                    children.append((p, None))
                elif e.is_symlink():
                    try:
                        os.stat(p)
                        self.warn(f"{p}: not a regular file or folder, skipped")
                    except OSError as exc:
                        self.warn(f"{p}: broken symlink or symlink loop ({exc.strerror}), skipped")
                else:
                    self.warn(f"{p}: not a regular file or folder, skipped")
            stack.extend(reversed(children))

    def file(self, path: Path, explicit: bool) -> None:
        kind = source_kind(path.name)
        if kind is None or parse_shard_name(path.name) is not None:
            if explicit:
                what = "an allllm shard" if kind else "not a raw text file"
                raise DataError(
                    f"{self.label} {str(path)!r}: {what}", f"raw input is {_KNOWN} files"
                )
            if kind is None:
                self.other["".join(path.suffixes[-2:]).lower() or "(no suffix)"] += 1
            else:
                self.shards += 1
            return
        st = _stat(path, self.warn)
        if st is None:
            return
        real = os.path.realpath(path)
        if real in self.seen:
            return
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            self.warn(f"{path}: cannot read ({exc.strerror}), skipped")
            return
        self.seen.add(real)
        if st.st_size == 0:
            self.empty += 1
            self.warn(f"{path}: empty file, skipped")
            return
        self.sources.append(RawSource(path, st.st_size, kind[0], kind[1]))

    def summary(self) -> str:
        parts = []
        if self.other:
            kinds = ", ".join(f"{n} {suffix}" for suffix, n in sorted(self.other.items()))
            parts.append(f"{sum(self.other.values())} file(s) of other types ({kinds})")
        if self.shards:
            parts.append(f"{self.shards} allllm shard file(s)")
        return "; ".join(parts)


def _stat(path: Path, warn: Callable[[str], None]) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError as exc:
        warn(f"{path}: cannot read ({exc.strerror}), skipped")
        return None


def resolve_sources(
    raw_paths: list[str],
    *,
    warn: Callable[[str], None] | None = None,
    label: str = "data.raw_path",
) -> list[RawSource]:
    """The raw input files named by ``raw_paths`` (files, folders, globs), each listed once.

    Entries keep their order; a folder's files (recursively) and a glob's matches are
    sorted by path. Folders are walked following symlinks; a symlink loop, an
    unreadable entry, an empty file, and (as one count) files of other types and
    allllm shard files are reported through ``warn`` and skipped; hidden entries
    (``.*``) inside folders are skipped silently. A path that does not exist, a glob
    that matches nothing, a named file of another type, or no input at all is a
    DataError; errors name the paths by ``label`` (the config key, or ``--input``).
    """
    if isinstance(raw_paths, (str, os.PathLike)):
        raw_paths = [str(raw_paths)]
    report = warn or log.warning
    resolver = _Resolver(report, label)
    for raw in raw_paths:
        resolver.entry(str(raw))
    skipped = resolver.summary()
    if skipped:
        report(f"skipped {skipped}; raw input is {_KNOWN}")
    if not resolver.sources:
        extra = f" ({skipped})" if skipped else ""
        if resolver.empty:
            extra += f" ({resolver.empty} empty file(s))"
        raise DataError(
            f"no raw text in {label} {', '.join(map(str, raw_paths))}{extra}",
            f"add {_KNOWN} files there, or point {label} at them",
        )
    return resolver.sources


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
    max_record_bytes: int = 256 << 20,
) -> Iterator[PieceBatch]:
    """The pieces of ``iter_pieces`` as ``PieceBatch`` lists (same arguments and errors).

    No object per piece: several times faster than ``iter_pieces`` for many short
    documents (``line`` mode), so bulk consumers should prefer it.
    """
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    if on_decode_error not in ("error", "replace"):
        raise ValueError(f"on_decode_error must be 'error' or 'replace', got {on_decode_error!r}")
    if chunk_bytes < 1 or max_record_bytes < 1:
        raise ValueError("chunk_bytes and max_record_bytes must be positive")
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"bad byte range start={start} end={end}")
    if source.compressed and (start or end is not None):
        raise DataError(
            f"{source.display}: a byte range of a compressed file cannot be read",
            "decompress it (gunzip) so appended text can be read on its own",
        )
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
    max_record_bytes: int = 256 << 20,
) -> Iterator[TextPiece]:
    """Stream ``source`` as documents, each in one or more pieces of bounded size.

    A piece holds at most about ``chunk_bytes`` bytes of input (a few more, since a
    character is never split); a longer document comes in several pieces cut at
    arbitrary character boundaries — the consumer decides where ids may be cut;
    ``"".join`` of a document's piece texts is the document. ``start``/``end`` read
    only that byte range of an uncompressed file, as if the file began and ended there
    (a BOM is dropped only at byte 0); for a ``.gz`` any range is a DataError.

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
    """The resolved absolute path, to recognize a source across runs and spellings."""
    return os.path.realpath(source.path)
