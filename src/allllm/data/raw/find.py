"""Find the sources of ``data.raw_path``: which files are raw input, and what each one is.

``resolve_sources`` turns the config's paths (files, folders, globs, or a list of
them) into a deterministic list of ``RawSource``; ``source_kind`` tells raw input
(``.txt``, ``.jsonl`` and ``.json`` — JSON lines — each plain, ``.gz``, ``.zst`` or
``.zstd``; ``.parquet``; ``.arrow``; any case) from other files. The metadata files
``datasets``' ``save_to_disk`` writes beside its ``.arrow`` files (``state.json``,
``dataset_info.json``, ``dataset_dict.json``) are not sources.
Finding is kept apart from reading (``read``): it looks only at names, folders and
file metadata, never at the text.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from allllm.data.shard_format import parse_shard_name
from allllm.errors import DataError

__all__ = [
    "RECORD_FORMATS",
    "SAVE_TO_DISK_METADATA",
    "SUFFIXES",
    "RawSource",
    "path_identity",
    "resolve_sources",
    "source_kind",
]

log = logging.getLogger(__name__)

Codec = Literal["gzip", "zstd"]
Format = Literal["txt", "jsonl", "parquet", "arrow"]
_CODECS: dict[str, Codec | None] = {"": None, ".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_FORMATS: dict[str, Format] = {".txt": "txt", ".jsonl": "jsonl", ".json": "jsonl"}
# suffix -> (format, codec): every text format with every codec, plus the columnar formats
# (compressed inside, by column); the longest suffixes first so ".jsonl.gz" is never read
# as ".gz" of something else
SUFFIXES: dict[str, tuple[Format, Codec | None]] = dict(
    sorted(
        [
            *((f + c, (fmt, codec)) for f, fmt in _FORMATS.items() for c, codec in _CODECS.items()),
            (".parquet", ("parquet", None)),
            (".arrow", ("arrow", None)),
        ],
        key=lambda kv: -len(kv[0]),
    )
)
#: formats of one record a document, read from ``data.text_field``
RECORD_FORMATS = frozenset({"jsonl", "parquet", "arrow"})
#: what ``datasets``' ``save_to_disk`` writes beside its .arrow files: metadata, not text
SAVE_TO_DISK_METADATA = frozenset({"state.json", "dataset_info.json", "dataset_dict.json"})
_KNOWN = ".txt, .jsonl or .json (JSON lines), each plain or .gz, .zst, .zstd; .parquet; .arrow"
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class RawSource:
    """One raw input file."""

    path: Path  # as found (relative to the current directory if it was given relative)
    size: int  # bytes on disk (compressed size for .gz / .zst)
    format: Format
    codec: Codec | None  # gzip (.gz), zstd (.zst, .zstd) or None

    @property
    def compressed(self) -> bool:
        """A compressed stream (.gz, .zst): decompressed in order from its start."""
        return self.codec is not None

    @property
    def columnar(self) -> bool:
        """A Parquet or Arrow file: read by row group / record batch, never as bytes."""
        return self.format in ("parquet", "arrow")

    @property
    def immutable(self) -> bool:
        """Read whole, never by byte range: a changed file is redone whole (no appending)."""
        return self.compressed or self.columnar

    @property
    def records(self) -> bool:
        """One record a document (``data.text_field``), whatever ``document_boundary`` says."""
        return self.format in RECORD_FORMATS

    @property
    def display(self) -> str:
        """Short path for messages: relative to the current directory where possible."""
        if self.path.is_absolute():
            try:
                return str(self.path.relative_to(Path.cwd()))
            except ValueError:
                pass
        return str(self.path)


def source_kind(name: str) -> tuple[Format, Codec | None] | None:
    """``(format, codec)`` for a file name, or None if it is not raw input."""
    low = name.lower()
    for suffix, kind in SUFFIXES.items():
        if low.endswith(suffix):
            return kind
    return None


def path_identity(path: str | os.PathLike[str], cwd: Path | None = None) -> str:
    """Who a source is across runs: its folder resolved (so spellings and folder symlinks
    agree), its own name as found — not resolved, so a Hugging Face cache file, a symlink
    into ``blobs/<hash>``, keeps its name when a new revision points it at a new blob —
    and a hub cache's ``snapshots/<revision>`` counted as one folder, so a new revision
    of one file is one changed source, not all-new sources. Whether a source changed is
    then told by its bytes (sha256), never by its path."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.is_absolute():
        p = (cwd or Path.cwd()) / p
    parts = (*Path(os.path.realpath(p.parent)).parts, p.name)
    for i in range(1, len(parts) - 2):
        if parts[i] == "snapshots" and parts[i - 1].startswith(_HUB_REPO_PREFIXES):
            parts = (*parts[: i + 1], "@revision", *parts[i + 2 :])
            break
    return str(Path(*parts))


_HUB_REPO_PREFIXES = ("datasets--", "models--", "spaces--")


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
            metadata = _save_to_disk_metadata(entries)
            for e in entries:
                if e.name.startswith(".") or e.name in metadata:
                    continue  # hidden (.git, .allllm, editor and OS files); save_to_disk's JSON
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


def _save_to_disk_metadata(entries: list[os.DirEntry[str]]) -> frozenset[str]:
    """The names in one folder that are ``save_to_disk`` metadata rather than JSON lines:
    ``state.json`` / ``dataset_info.json`` beside ``.arrow`` files, ``dataset_dict.json``
    beside the split folders of a DatasetDict."""
    names = {e.name for e in entries}
    found = names & SAVE_TO_DISK_METADATA
    if not found:
        return frozenset()
    if any(n.lower().endswith(".arrow") for n in names):
        return frozenset(found)
    if "dataset_dict.json" in found and any(_is_dir(e) for e in entries):
        return frozenset({"dataset_dict.json"})
    return frozenset()


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


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
