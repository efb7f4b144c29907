"""The per-document sidecar of a shard, ``<stem>.docs``: which documents its token stream holds.

A shard's rows are its documents' ids (BOS/EOS included) one after another, cut
every ``seq_len`` ids, so a row says nothing about which text it came from. The
sidecar does: one 32-byte record per document with a 128-bit digest of its ids
and its first token's offset in the unpadded stream, so training can tell the
documents a model already trained (the ledger) from new ones, also when an
edited source is tokenized again into a shard with another ``shard_id``.

Layout (little-endian, ``np.fromfile(path, DOC_DTYPE, offset=32)`` reads it):

- a 32-byte header: magic ``b"ALLLDOCS"``, ``format_version`` uint32, record size
  uint32 (32), record count uint64, 8 zero bytes;
- ``count`` records of :data:`DOC_DTYPE`: ``hi``/``lo`` the digest
  (:data:`DIGEST_ALGORITHM`: blake2b-128 of the ids as uint32 LE, the first and last
  8 bytes as big-endian integers), ``start`` the first token's offset (a document
  ends where the next one starts, the last at meta ``n_tokens``), ``source`` an
  index into meta ``sources`` (:data:`NO_SOURCE` when unknown), ``flags``
  :data:`DOC_CONTINUED` | :data:`DOC_CONTINUES` where the record is the part of a
  document cut between shards (meta ``sources[].inside_document``), else 0.

Tokenize writes the sidecar with the shard (``tokenize.write``; the records come from
``document_digest``, re-exported here) and names it in meta ``documents``. A shard
made before the sidecar existed has its documents split from its token stream where
BOS or EOS mark them (:func:`documents_from_stream`), cached under
``data/.allllm/cache/``; a shard with neither stays shard-level.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from allllm.data.document_digest import (
    DIGEST_ALGORITHM,
    DOC_CONTINUED,
    DOC_CONTINUES,
    DOC_DTYPE,
    NO_SOURCE,
    BackgroundDigester,
    DocumentDigester,
    digest_ids,
)
from allllm.data.shard_format import CACHE_DIR, DOCS_SUFFIX, DocumentsInfo
from allllm.errors import DataError, FormatVersionError
from allllm.util.atomic import fsync_dir
from allllm.util.versions import FileFormat

if TYPE_CHECKING:
    from allllm.data.registry_entries import ShardEntry

__all__ = [
    "DIGEST_ALGORITHM",
    "DOCS_FORMAT",
    "DOCS_SUFFIX",
    "DOC_CONTINUED",
    "DOC_CONTINUES",
    "DOC_DTYPE",
    "HEADER_SIZE",
    "MAGIC",
    "NO_SOURCE",
    "BackgroundDigester",
    "DocumentDigester",
    "cache_path",
    "digest_ids",
    "documents_from_stream",
    "read_documents",
    "shard_documents",
    "write_documents",
]

#: <stem>.docs: version 1 is the only one so far
DOCS_FORMAT = FileFormat("document sidecar", current=1)
MAGIC = b"ALLLDOCS"
HEADER_SIZE = 32
_HEADER = struct.Struct("<8sIIQ8x")
#: ids read at once (as int64 rows) when documents are split from a shard's stream: ~16 MB
_BLOCK_IDS = 1 << 21

assert _HEADER.size == HEADER_SIZE and DOC_DTYPE.itemsize == 32


def write_documents(path: Path, records: np.ndarray) -> tuple[str, int]:
    """Write header and ``records`` to the new file ``path`` and fsync it: (sha256, bytes).

    The caller names a temporary and renames it (a shard's files are renamed together).
    """
    records = np.ascontiguousarray(records, dtype=DOC_DTYPE)
    head = _HEADER.pack(MAGIC, DOCS_FORMAT.current, DOC_DTYPE.itemsize, int(records.size))
    body = memoryview(records).cast("B")
    sha = hashlib.sha256(head)
    sha.update(body)
    with path.open("xb") as fh:
        fh.write(head)
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    return sha.hexdigest(), len(head) + len(body)


def read_documents(
    path: Path, info: DocumentsInfo | None = None, *, n_tokens: int | None = None
) -> np.ndarray:
    """The records of a sidecar, checked (header, size, ``info``'s count, ascending starts
    up to ``n_tokens``); any problem is a DataError naming the file, a newer format a
    FormatVersionError."""
    how = "re-tokenize its source (allllm tokenize --force)"
    try:
        with path.open("rb") as fh:
            head = fh.read(HEADER_SIZE)
            size = os.fstat(fh.fileno()).st_size
            if len(head) < HEADER_SIZE:
                raise DataError(f"{path}: document sidecar truncated ({size} bytes)", how)
            magic, version, record_size, count = _HEADER.unpack(head)
            if magic != MAGIC:
                raise DataError(f"{path}: not a document sidecar (wrong magic)", how)
            if version < 1:
                raise DataError(f"{path}: document sidecar of format_version {version}", how)
            DOCS_FORMAT.refuse_newer(version, str(path))
            if record_size != DOC_DTYPE.itemsize:
                raise DataError(
                    f"{path}: document records of {record_size} bytes, expected "
                    f"{DOC_DTYPE.itemsize}",
                    how,
                )
            expected = HEADER_SIZE + count * DOC_DTYPE.itemsize
            if size != expected:
                what = "truncated" if size < expected else "has trailing bytes"
                raise DataError(
                    f"{path}: document sidecar {what}: {size} bytes, its header says "
                    f"{count} documents ({expected} bytes)",
                    how,
                )
            records = np.fromfile(fh, dtype=DOC_DTYPE, count=count)
    except FileNotFoundError:
        raise DataError(f"{path}: document sidecar not found", how) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read document sidecar: {exc.strerror or exc}") from None
    if records.size != count:
        raise DataError(f"{path}: document sidecar truncated while reading", how)
    if info is not None and count != info.count:
        raise DataError(f"{path}: {count} documents, meta says {info.count}", how)
    starts = records["start"]
    if count:
        if starts[0] != 0:
            raise DataError(f"{path}: the first document starts at {starts[0]}, not 0", how)
        if (starts[1:] < starts[:-1]).any():
            raise DataError(f"{path}: document starts are not ascending", how)
        # an empty last document (no BOS/EOS, no ids) starts at n_tokens; none starts later
        if n_tokens is not None and starts[-1] > n_tokens:
            raise DataError(
                f"{path}: a document starts at {starts[-1]}, past the shard's {n_tokens} ids", how
            )
    return records


class _StreamSplitter:
    """Finds documents in a stream by its BOS or EOS ids, chunk by chunk, and digests them."""

    def __init__(self, *, split_id: int, after: bool) -> None:
        self.split_id = split_id
        self.after = after  # a document ends right after each split id (EOS) or before it (BOS)
        self.digester = DocumentDigester()

    def add(self, ids: np.ndarray) -> None:
        hits = np.flatnonzero(np.asarray(ids) == self.split_id)
        ends = hits + 1 if self.after else hits
        if not self.after and ends.size and ends[0] == 0 and self.digester.n_tokens == 0:
            ends = ends[1:]  # the stream's first BOS starts the first document
        self.digester.add(ids, ends, [NO_SOURCE] * int(ends.size))

    def finish(self, n_tokens: int) -> np.ndarray:
        return self.digester.finish(n_tokens)


def _splitter(
    *, bos_id: int | None, eos_id: int | None, add_bos: bool, add_eos: bool
) -> _StreamSplitter | None:
    if add_eos and eos_id is not None:
        return _StreamSplitter(split_id=eos_id, after=True)
    if add_bos and bos_id is not None:
        return _StreamSplitter(split_id=bos_id, after=False)
    return None


def documents_from_stream(
    tokens: np.ndarray,
    *,
    bos_id: int | None,
    eos_id: int | None,
    add_bos: bool,
    add_eos: bool,
) -> np.ndarray | None:
    """The documents of a shard without a sidecar, from its unpadded token stream.

    With EOS added, a document ends right after each EOS; with only BOS, one starts at
    each BOS. None where neither marks documents (the shard stays shard-level).
    Sources are :data:`NO_SOURCE`.
    """
    splitter = _splitter(bos_id=bos_id, eos_id=eos_id, add_bos=add_bos, add_eos=add_eos)
    if splitter is None:
        return None
    arr = np.asarray(tokens)
    splitter.add(arr)
    return splitter.finish(int(arr.size))


def cache_path(data_dir: Path, shard_id: str) -> Path:
    """Where the documents split from a shard's stream are cached."""
    return data_dir / CACHE_DIR / f"docs-{shard_id}{DOCS_SUFFIX}"


def _save_cache(path: Path, records: np.ndarray) -> None:
    """Write a cache entry atomically; a read-only data dir keeps it in memory only."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_documents(temp, records)
        os.replace(temp, path)
        fsync_dir(path.parent)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink()


def _split_rows(entry: ShardEntry, data_dir: Path, splitter: _StreamSplitter) -> None:
    """Feed a shard's valid ids to ``splitter``, about ``_BLOCK_IDS`` at a time."""
    from allllm.data.dataset import ShardDataset

    meta = entry.meta
    assert meta is not None
    src = entry.source(data_dir)
    dataset = ShardDataset([src], vocab_limit=meta.tokenizer.vocab_size)
    try:
        block = max(1, _BLOCK_IDS // src.seq_len)
        for first in range(0, src.n_rows, block):
            rows = np.arange(first, min(first + block, src.n_rows), dtype=np.int64)
            ids, lengths = dataset.fetch_numpy(rows)
            if rows[-1] == src.n_rows - 1 and lengths[-1] < src.seq_len:
                flat = np.concatenate([ids[:-1].reshape(-1), ids[-1, : int(lengths[-1])]])
            else:
                flat = ids.reshape(-1)
            splitter.add(flat)
    finally:
        dataset.close()


def shard_documents(entry: ShardEntry, data_dir: Path) -> np.ndarray | None:
    """The documents of a valid shard: its sidecar, else split from its stream (cached).

    None for a shard without meta, or one whose documents neither BOS nor EOS marks.
    """
    meta = entry.meta
    if meta is None:
        return None
    if meta.documents is not None:
        path = data_dir / f"{entry.name}{DOCS_SUFFIX}"  # the name the registry checked
        return read_documents(path, meta.documents, n_tokens=meta.n_tokens)
    tok = meta.tokenizer
    splitter = _splitter(
        bos_id=tok.bos_id, eos_id=tok.eos_id, add_bos=meta.add_bos, add_eos=meta.add_eos
    )
    if splitter is None:
        return None
    cache = cache_path(data_dir, meta.shard_id)
    writable = True
    if cache.exists():
        try:
            return read_documents(cache, n_tokens=meta.n_tokens)
        except DataError:
            pass  # a damaged cache entry: rebuilt below
        except FormatVersionError:
            writable = False  # a newer allllm's entry: it is not damaged, so never overwritten
    _split_rows(entry, data_dir, splitter)
    records = splitter.finish(meta.n_tokens)
    if writable:
        _save_cache(cache, records)
    return records
