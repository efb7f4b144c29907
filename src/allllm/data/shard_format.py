"""The shard format (docs/design.md: shards): names, the meta record, ``shard_id`` and ``.bin`` dtype.

This module is the contract between the writer (``allllm tokenize``) and the
readers (registry, dataset, ``status``, ``train``). It holds no I/O policy
beyond reading and writing one meta file, so both sides agree on every byte.

A shard is the files sharing one stem ``<source>.cached.<seq_len>.<ts>[.<k>]``:

- ``<stem>.jsonl``     one JSON array of ints a line (one row a line)
- ``<stem>.bin``       the rows as a raw little-endian uint16/uint32 array, no header,
                       the final row padded to ``seq_len`` with ``pad_id``
- ``<stem>.docs``      one record per document (digest, token span, source): the
                       sidecar of ``allllm.data.documents``, named by meta ``documents``
                       (not by meta ``files``: an older allllm takes unknown file roles for a
                       broken shard, while it ignores the unknown ``documents`` key)
- ``<stem>.meta.json`` written last; without it a shard is ``unverified``
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from allllm import __version__
from allllm.errors import DataError
from allllm.util.atomic import atomic_write_text
from allllm.util.versions import FileFormat

#: <stem>.meta.json: version 1 is the only one so far (older versions would migrate here)
META_FORMAT = FileFormat("shard meta", current=1)
FORMAT_VERSION = META_FORMAT.current
META_SUFFIX = ".meta.json"
DATA_SUFFIXES = {"jsonl": ".jsonl", "bin": ".bin"}
DOCS_SUFFIX = ".docs"  # the per-document sidecar (allllm.data.documents); not a data file
STATE_DIR = ".allllm"  # data/.allllm: journal and caches, never user data
INFLIGHT_DIR = f"{STATE_DIR}/inflight"  # one file per stem being written (the journal)
CACHE_DIR = f"{STATE_DIR}/cache"  # e.g. line-offset indexes of .jsonl shards

_NAME_RE = re.compile(
    r"^(?P<stem>(?P<source>.+)\.cached\.(?P<seq_len>\d+)\.(?P<ts>\d{8}_\d{6})(?:\.(?P<k>\d+))?)"
    r"(?P<suffix>\.jsonl|\.bin|\.meta\.json)$"
)


@dataclass(frozen=True)
class ShardName:
    """A parsed shard file name."""

    stem: str
    source: str
    seq_len: int
    timestamp: str
    role: Literal["jsonl", "bin", "meta"]


def parse_shard_name(filename: str) -> ShardName | None:
    """Parse ``x.cached.2048.20240701_101512[.k].{jsonl,bin,meta.json}``; None if not a shard file."""
    m = _NAME_RE.match(filename)
    if not m:
        return None
    suffix = m["suffix"]
    role: Literal["jsonl", "bin", "meta"] = (
        "meta" if suffix == META_SUFFIX else ("jsonl" if suffix == ".jsonl" else "bin")
    )
    return ShardName(m["stem"], m["source"], int(m["seq_len"]), m["ts"], role)


def shard_stem(source_stem: str, seq_len: int, timestamp: str) -> str:
    return f"{source_stem}.cached.{seq_len}.{timestamp}"


def stem_taken(data_dir: Path, stem: str) -> bool:
    """True if any file of ``stem`` exists (data, sidecar, meta, or a temporary of the writer)."""
    suffixes = (*DATA_SUFFIXES.values(), DOCS_SUFFIX, META_SUFFIX)
    if any((data_dir / f"{stem}{s}").exists() for s in suffixes):
        return True
    return (data_dir / INFLIGHT_DIR / stem).exists()


def unique_stem(data_dir: Path, source_stem: str, seq_len: int, timestamp: str) -> str:
    """A stem no file uses yet: a name that exists gets a ``.<k>`` suffix (never overwrite)."""
    base = shard_stem(source_stem, seq_len, timestamp)
    if not stem_taken(data_dir, base):
        return base
    k = 1
    while stem_taken(data_dir, f"{base}.{k}"):
        k += 1
    return f"{base}.{k}"


def shard_file(data_dir: Path, stem: str, role: str) -> Path:
    """The path of one role (``jsonl``, ``bin``, ``docs``, ``meta``) of a shard."""
    if role == "meta":
        suffix = META_SUFFIX
    elif role == "docs":
        suffix = DOCS_SUFFIX
    else:
        suffix = DATA_SUFFIXES[role]
    return data_dir / f"{stem}{suffix}"


def source_format(path: str) -> Literal["txt", "jsonl"]:
    """The raw format a meta ``sources[].path`` names (``.jsonl[.gz]`` or text)."""
    return "jsonl" if path.lower().removesuffix(".gz").endswith(".jsonl") else "txt"


def shard_order_key(
    created: str | None, meta_mtime_ns: int, stem: str
) -> tuple[str, int, int, str]:
    """Orders shards by age: meta ``created``, then the meta file's mtime (same second), then
    the ``.<k>`` of a name taken in the same second. Supersession only reaches older shards."""
    m = re.search(r"\.(\d+)$", stem)
    return (created or "", meta_mtime_ns, int(m[1]) if m else 0, stem)


# -- dtype and ids --------------------------------------------------------------------------------


def bin_dtype_for(id_range: int) -> Literal["uint16", "uint32"]:
    """``.bin`` dtype from the tokenizer's id range (decided by the tokenizer, not the content)."""
    return "uint16" if id_range <= 2**16 else "uint32"


def numpy_dtype(name: str) -> np.dtype:
    """Little-endian numpy dtype of a meta ``dtype`` name."""
    if name not in ("uint16", "uint32"):
        raise DataError(f"unknown shard dtype {name!r} (expected uint16 or uint32)")
    return np.dtype("<u2" if name == "uint16" else "<u4")


class ShardIdHasher:
    """Streaming ``shard_id``: sha256 of the unpadded token stream as uint32 LE, then seq_len.

    Exactly: ``sha256(ids.astype('<u4').tobytes() ... || b"allllm-shard-v1" || uint64le(seq_len))``.
    Only ids stored in rows count (BOS/EOS included, ``.bin`` padding excluded),
    so renaming, re-encoding as jsonl/bin or a different dtype never changes it.
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, ids: np.ndarray | Iterable[int]) -> None:
        arr = np.asarray(ids)
        if arr.dtype != np.dtype("<u4"):
            arr = arr.astype("<u4")
        self._h.update(arr.tobytes())

    def hexdigest(self, seq_len: int) -> str:
        h = self._h.copy()
        h.update(b"allllm-shard-v1")
        h.update(struct.pack("<Q", seq_len))
        return h.hexdigest()


def compute_shard_id(rows: Iterable[np.ndarray | list[int]], seq_len: int) -> str:
    """``shard_id`` of a sequence of (unpadded) rows."""
    h = ShardIdHasher()
    for row in rows:
        h.update(row)
    return h.hexdigest(seq_len)


# -- meta -----------------------------------------------------------------------------------------


class _MetaModel(BaseModel):
    # Extra keys are kept (a newer writer may add fields) but every known field is checked.
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class TokenizerInfo(_MetaModel):
    backend: str
    path: str | None
    fingerprint: str
    vocab_size: int = Field(ge=1)
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None


class SourceInfo(_MetaModel):
    path: str
    size: int = Field(ge=0)
    sha256: str
    byte_range: tuple[int, int]
    # the range starts / ends inside a document cut at a safe point of the encoder (its
    # other part is in the shard holding the bytes before / after); metas before 0.x: absent
    inside_document: tuple[bool, bool] = (False, False)


class FileInfo(_MetaModel):
    name: str
    sha256: str
    size: int = Field(ge=0)


class DocumentsInfo(_MetaModel):
    """Meta ``documents``: the shard's sidecar ``<stem>.docs`` (``allllm.data.documents``)."""

    name: str
    sha256: str
    size: int = Field(ge=0)
    count: int = Field(ge=0)
    digest: str  # how each document's ids are digested (documents.DIGEST_ALGORITHM)
    format_version: int = 1


class ShardMeta(_MetaModel):
    """``<stem>.meta.json``: every field of docs/design.md's shards section plus the tokenize settings."""

    format_version: int
    shard_id: str
    seq_len: int = Field(ge=1)
    dtype: Literal["uint16", "uint32"]
    n_rows: int = Field(ge=0)
    n_tokens: int = Field(ge=0)
    last_row_len: int = Field(ge=0)
    max_id: int = Field(ge=-1)  # -1 for a shard without tokens
    tokenizer: TokenizerInfo
    document_boundary: str
    sources: list[SourceInfo]
    files: dict[str, FileInfo]
    created: str
    allllm_version: str = __version__
    # Settings that decide the ids besides the tokenizer (used by "up to date" checks).
    add_bos: bool = False
    add_eos: bool = True
    text_field: str | None = None
    n_documents: int = Field(default=0, ge=0)
    # shard_ids this shard replaces (their source changed other than by appending): they become
    # `superseded` and are never trained unless already seen.
    supersedes: list[str] = Field(default_factory=list)
    # the per-document sidecar; None for shards written before it existed (their documents
    # are split from the token stream where BOS/EOS mark them)
    documents: DocumentsInfo | None = None

    def settings_mismatch(
        self, *, add_bos: bool, add_eos: bool, document_boundary: str, text_field: str
    ) -> str | None:
        """Which tokenize setting besides tokenizer and seq_len differs from a config's, if any."""
        if self.add_bos != add_bos or self.add_eos != add_eos:
            return (
                f"BOS/EOS settings differ: shard add_bos={self.add_bos} add_eos={self.add_eos}, "
                f"the config add_bos={add_bos} add_eos={add_eos}"
            )
        formats = {source_format(s.path) for s in self.sources}
        if "txt" in formats and self.document_boundary != document_boundary:
            return (
                f"document_boundary differs: shard {self.document_boundary!r}, "
                f"the config {document_boundary!r}"
            )
        if "jsonl" in formats and self.text_field not in (None, text_field):
            return f"text_field differs: shard {self.text_field!r}, the config {text_field!r}"
        return None

    def row_len(self, row: int) -> int:
        """Valid ids in ``row`` (only the final row may be short)."""
        return self.last_row_len if row == self.n_rows - 1 else self.seq_len

    def expected_bin_size(self) -> int:
        return self.n_rows * self.seq_len * numpy_dtype(self.dtype).itemsize

    def check_consistent(self) -> str | None:
        """A reason the meta contradicts itself, or None."""
        if self.n_rows == 0:
            if self.n_tokens or self.last_row_len:
                return "meta counts tokens but no rows"
            return None
        if not 1 <= self.last_row_len <= self.seq_len:
            return f"last_row_len {self.last_row_len} outside 1..{self.seq_len}"
        if self.n_tokens != (self.n_rows - 1) * self.seq_len + self.last_row_len:
            return "n_tokens does not match n_rows, seq_len and last_row_len"
        if not self.files:
            return "meta lists no data files"
        unknown = set(self.files) - set(DATA_SUFFIXES)
        if unknown:
            return f"meta lists unknown file roles {sorted(unknown)}"
        return None


def read_meta(path: Path) -> ShardMeta:
    """Read and validate one meta file; any problem is a :class:`DataError` naming the file.

    An older ``format_version`` is migrated; a newer one is a FormatVersionError (a newer
    allllm made the shard: it is not broken, this allllm cannot read it).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: meta file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read meta: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: meta is not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
    if META_FORMAT.version_of(data) is not None:
        data = META_FORMAT.upgrade(data, str(path))
    try:
        return ShardMeta.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise DataError(f"{path}: meta field {where}: {err['msg']}") from None


def write_meta(path: Path, meta: ShardMeta) -> None:
    """Write a meta file atomically (temp, fsync, rename)."""
    atomic_write_text(path, json.dumps(meta.model_dump(mode="json"), indent=2) + "\n")


def meta_to_dict(meta: ShardMeta) -> dict[str, Any]:
    return meta.model_dump(mode="json")


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file read in bounded chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def inflight_dir(data_dir: Path) -> Path:
    """Where tokenize journals the stems it is writing (``data/.allllm/inflight``)."""
    return data_dir / INFLIGHT_DIR


def journaled_stems(data_dir: Path) -> set[str]:
    """Stems with a journal entry: a tokenize is writing them, or crashed while it did.

    Here, not in the tokenize package, because every scan needs it and the scan must not
    import the pipeline that itself asks the registry about shards.
    """
    folder = inflight_dir(data_dir)
    try:
        return {e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")}
    except FileNotFoundError:
        return set()
