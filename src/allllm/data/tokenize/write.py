"""Write one shard atomically: packed rows to ``.jsonl`` / ``.bin``, its ``.docs``, then its meta.

The token stream arrives in chunks; complete rows of exactly ``seq_len`` ids
are rendered and hashed as they form, so memory is bounded by one chunk, and
each document is digested as its ids pass, on a thread of its own
(``document_digest.BackgroundDigester``: only the 32-byte records are kept, for the
``.docs`` sidecar written at the end). Data
goes to temporary names listed in the journal (``journal.py``), is fsynced and
renamed, and the meta file is renamed into place last: a reader that sees the
meta sees complete data. The journal entry stays until the caller ``commit``s
the finished shard (or ``abort``s it: a rebuild a live shard already holds).
Any failure (a full disk, a bad id, Ctrl-C) removes every file of the shard and
leaves older shards untouched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from allllm import __version__
from allllm.data.document_digest import (
    DIGEST_ALGORITHM,
    DOC_CONTINUED,
    DOC_CONTINUES,
    BackgroundDigester,
)
from allllm.data.documents import write_documents
from allllm.data.shard_format import (
    DATA_SUFFIXES,
    DOCS_SUFFIX,
    FORMAT_VERSION,
    META_SUFFIX,
    DocumentsInfo,
    FileInfo,
    ShardMeta,
    numpy_dtype,
)
from allllm.data.tokenize import journal
from allllm.data.tokenize.hashing_file import _bytes_of, _HashingFile, _StreamHasher
from allllm.data.tokenize.jsonl_render import JsonlRenderer
from allllm.errors import DataError
from allllm.util.atomic import fsync_dir
from allllm.util.clock import utc_iso
from allllm.util.faults import fault_point

#: the writer's stages: CPU seconds of the writing thread, except ``docs`` (CPU seconds of the
#: thread digesting documents) and ``finish`` (fsync, renames, meta), which is wall time
WRITE_STAGES = ("render", "hash", "docs", "write", "finish")


class StemTaken(Exception):
    """Another process journaled this stem first: pick the next free name."""


class ShardWriter:
    """Streams a token stream into one shard ``<data_dir>/<stem>.*``.

    ``id_range`` is the tokenizer's id range (it decides the ``.jsonl`` width),
    ``vocab_size`` the model's: an id at or above either aborts the shard.
    """

    def __init__(
        self,
        data_dir: Path,
        stem: str,
        *,
        seq_len: int,
        formats: list[str],
        dtype: str,
        pad_id: int,
        id_range: int,
        vocab_size: int,
    ) -> None:
        self.data_dir = data_dir
        self.stem = stem
        self.seq_len = seq_len
        self.formats = [f for f in ("jsonl", "bin") if f in formats]
        self.dtype = dtype
        self.np_dtype = numpy_dtype(dtype)
        self.pad_id = pad_id
        self.id_range = id_range
        self.vocab_size = vocab_size
        self.timings = dict.fromkeys(WRITE_STAGES, 0.0)
        self._renderer = JsonlRenderer(id_range) if "jsonl" in self.formats else None
        self._final = {role: f"{stem}{DATA_SUFFIXES[role]}" for role in self.formats}
        self._temp = {role: f".{name}.tmp" for role, name in self._final.items()}
        self._meta_name = f"{stem}{META_SUFFIX}"
        self._meta_temp = f".{self._meta_name}.tmp"
        self._docs_name = f"{stem}{DOCS_SUFFIX}"
        self._docs_temp = f".{self._docs_name}.tmp"
        self._digester = BackgroundDigester()
        self._files: dict[str, _HashingFile] = {}
        self._pending = np.empty(0, dtype=np.uint32)  # ids not yet forming a full row
        self._cut: tuple[list[int], list[int]] = ([], [])  # ``cut_documents``
        self._hasher = _StreamHasher()
        # a uint32 .bin holds the id stream's bytes: its hash is the stream's, plus the padding
        self._bin_from_stream = "bin" in self.formats and self.np_dtype == np.dtype("<u4")
        self._bin_sha: Any = None  # set when the final, short row is written
        self.n_rows = 0
        self.n_tokens = 0
        self.max_id = -1
        self._done = False
        names = [*self._temp.values(), *self._final.values(), self._docs_temp, self._docs_name]
        names += [self._meta_temp, self._meta_name]
        try:
            journal.begin_new(data_dir, stem, names)
        except FileExistsError:
            raise StemTaken(stem) from None  # another rank took this name a moment ago
        except OSError as exc:
            self.fail(exc)
        try:
            for role, name in self._temp.items():
                hashed = not (role == "bin" and self._bin_from_stream)
                self._files[role] = _HashingFile(data_dir / name, self.timings, hashed=hashed)
        except OSError as exc:
            self.fail(exc)

    # -- writing ----------------------------------------------------------------------------------
    def add(
        self,
        ids: np.ndarray,
        doc_ends: np.ndarray | None = None,
        doc_sources: Sequence[int] | None = None,
    ) -> None:
        """Append a chunk of the token stream (any integer array; checked against the vocab).

        ``doc_ends``: offsets in ``ids`` (exclusive, ascending) where documents end, and
        ``doc_sources`` each one's index in meta ``sources``; ids after the last end belong
        to a document that goes on (without them the whole chunk does). The stream's ids
        after the last end of all make one more document.
        """
        ends = np.zeros(0, np.int64) if doc_ends is None else doc_ends
        if ids.size == 0 and not len(ends):
            return
        top = int(ids.max()) if ids.size else -1
        low = 0 if ids.dtype.kind == "u" or not ids.size else int(ids.min())
        limit = min(self.vocab_size, self.id_range)
        if top >= limit or low < 0:
            self.abort()
            raise DataError(
                f"the tokenizer produced id {top if low >= 0 else low}, but ids must lie in "
                f"0..{limit - 1} (model.vocab_size {self.vocab_size}, tokenizer id range "
                f"{self.id_range}); shard {self.stem} not written",
                "check tokenizer.path and model.vocab_size",
            )
        self.max_id = max(self.max_id, top)
        stream = ids.astype(np.uint32, copy=False)
        self._digester.add(stream, ends, [] if doc_sources is None else doc_sources)
        if self._pending.size:  # complete the pending row first; the rest needs no copy
            need = self.seq_len - self._pending.size
            head = np.concatenate([self._pending, stream[:need]])
            stream = stream[need:]
            if head.size < self.seq_len:
                self._pending = head
                return
            self._pending = np.empty(0, dtype=np.uint32)
            self._write_rows(head.reshape(1, -1))
        n_full = stream.size // self.seq_len
        if n_full:
            self._write_rows(stream[: n_full * self.seq_len].reshape(n_full, self.seq_len))
        if stream.size > n_full * self.seq_len:
            self._pending = stream[n_full * self.seq_len :].copy()

    def _write_rows(self, rows: np.ndarray) -> None:
        short = rows.shape[1] < self.seq_len
        t0 = time.thread_time()
        if short and self._bin_from_stream:
            self._bin_sha = self._hasher.stream_hash()
        self._hasher.update(rows)
        self.timings["hash"] += time.thread_time() - t0
        try:
            if self._renderer is not None:
                t0 = time.thread_time()
                text = self._renderer.render(rows)
                self.timings["render"] += time.thread_time() - t0
                self._files["jsonl"].write(_bytes_of(text))
            if "bin" in self._files:
                block = rows
                if short:  # the final row, padded
                    block = np.full((rows.shape[0], self.seq_len), self.pad_id, dtype=np.uint32)
                    block[:, : rows.shape[1]] = rows
                data = _bytes_of(block.astype(self.np_dtype, copy=False))
                if self._bin_sha is not None:
                    self._bin_sha.update(data)
                self._files["bin"].write(data)
            fault_point("tokenize.rows")
        except OSError as exc:
            self.fail(exc)
        self.n_rows += rows.shape[0]
        self.n_tokens += rows.size

    def has_pending(self) -> bool:
        """True while ids wait for the final (short) row."""
        return bool(self._pending.size)

    def cut_documents(self, continued: Sequence[int], continues: Sequence[int]) -> None:
        """Sources (meta ``sources`` indices) whose first document here continues one begun
        in another shard / whose last goes on in another: their records get flagged."""
        self._cut = (list(continued), list(continues))

    def _flag_cut_documents(self, records: np.ndarray) -> None:
        continued, continues = self._cut
        for sources, flag, pick in ((continued, DOC_CONTINUED, 0), (continues, DOC_CONTINUES, -1)):
            for k in sources:
                at = np.flatnonzero(records["source"] == k)
                if at.size:
                    records["flags"][at[pick]] |= flag

    # -- completion -------------------------------------------------------------------------------
    def finish(self, **meta_fields: Any) -> ShardMeta:
        """Flush the final (possibly short) row, write the ``.docs``, rename the data files and
        the ``.docs``, then write the meta last.

        ``meta_fields`` are the caller's meta fields (tokenizer, sources, ...);
        counts, ids and file digests are filled in here. A ``supersedes`` entry equal
        to this shard's own id is dropped (re-tokenizing identical text replaces nothing).
        The shard stays journaled (invisible to scans) until ``commit`` or ``abort``.
        """
        last_row_len = self.seq_len if self.n_rows else 0
        if self._pending.size:
            last_row_len = int(self._pending.size)
            self._write_rows(self._pending.reshape(1, -1))
            self._pending = np.empty(0, dtype=np.uint32)
        t0 = time.perf_counter()
        try:
            for f in self._files.values():
                f.close()
            records = self._digester.finish(self.n_tokens)
            self._flag_cut_documents(records)
            self.timings["docs"] += self._digester.seconds
            docs_sha, docs_size = write_documents(self.data_dir / self._docs_temp, records)
            shard_id = self._hasher.hexdigest(self.seq_len)
            if "supersedes" in meta_fields:
                meta_fields["supersedes"] = [s for s in meta_fields["supersedes"] if s != shard_id]
            meta = ShardMeta(
                format_version=FORMAT_VERSION,
                shard_id=shard_id,
                seq_len=self.seq_len,
                dtype=self.dtype,  # type: ignore[arg-type]
                n_rows=self.n_rows,
                n_tokens=self.n_tokens,
                last_row_len=last_row_len,
                max_id=self.max_id,
                files={
                    role: FileInfo(name=self._final[role], sha256=self._file_sha(role), size=f.size)
                    for role, f in self._files.items()
                },
                documents=DocumentsInfo(
                    name=self._docs_name,
                    sha256=docs_sha,
                    size=docs_size,
                    count=int(records.size),
                    digest=DIGEST_ALGORITHM,
                ),
                created=utc_iso(),
                allllm_version=__version__,
                **meta_fields,
            )
            for role in self._files:
                os.replace(self.data_dir / self._temp[role], self.data_dir / self._final[role])
            fault_point("tokenize.renamed")
            os.replace(self.data_dir / self._docs_temp, self.data_dir / self._docs_name)
            fsync_dir(self.data_dir)  # every file in place, durably, before the meta names them
            fault_point("tokenize.docs")
            self._write_meta(meta)
            fault_point("tokenize.meta")
        except OSError as exc:
            self.fail(exc)
        self.timings["finish"] += time.perf_counter() - t0
        return meta

    def commit(self) -> None:
        """Make the finished shard visible: drop its journal entry (durably)."""
        t0 = time.perf_counter()
        try:
            journal.end(self.data_dir, self.stem)
        except OSError as exc:
            self.fail(exc)
        self._done = True
        self.timings["finish"] += time.perf_counter() - t0

    def _file_sha(self, role: str) -> str:
        sha = self._files[role].sha
        if sha is None:  # a uint32 .bin: the stream's hash (and the final row's padding)
            sha = self._bin_sha if self._bin_sha is not None else self._hasher.stream_hash()
        return sha.hexdigest()

    def _write_meta(self, meta: ShardMeta) -> None:
        temp = self.data_dir / self._meta_temp
        with temp.open("x", encoding="utf-8") as fh:
            fh.write(json.dumps(meta.model_dump(mode="json"), indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, self.data_dir / self._meta_name)
        fsync_dir(self.data_dir)

    def abort(self) -> None:
        """Remove every file of this shard (temporary or renamed) and its journal entry.

        Also after ``finish``: the entry goes last, so a kill midway leaves the rest journaled
        for the next tokenize to remove. A no-op once committed.
        """
        if self._done:
            return
        self._done = True
        with contextlib.suppress(Exception):  # a digester error is moot once the shard goes
            self._digester.close()
        for f in self._files.values():
            f.discard()
        with contextlib.suppress(OSError):
            journal.remove_listed_files(self.data_dir, self.stem)

    def fail(self, exc: OSError) -> NoReturn:
        """Abort the shard and raise the one-line error of a failed write (also for a write a
        caller makes for this shard, e.g. a journal entry)."""
        self.abort()
        if exc.errno == errno.ENOSPC:
            what = "the disk is full"
        elif exc.errno == errno.EDQUOT:
            what = "the disk quota is exceeded"
        else:
            what = exc.strerror or str(exc)
        raise DataError(
            f"cannot write shard {self.stem} in {self.data_dir}: {what}",
            "free space or fix permissions and rerun; nothing partial was kept and older shards "
            "are untouched",
        ) from exc
