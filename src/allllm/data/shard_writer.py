"""Write one shard atomically: packed rows to ``.jsonl`` / ``.bin``, then its meta, last.

The token stream arrives in chunks; complete rows of exactly ``seq_len`` ids
are rendered and hashed as they form, so memory is bounded by one chunk. Data
goes to temporary names listed in the journal (``journal.py``), is fsynced and
renamed, and the meta file is renamed into place last: a reader that sees the
meta sees complete data. Any failure (a full disk, a bad id) removes every file
of the shard and leaves older shards untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import IO, Any

import numpy as np

from allllm import __version__
from allllm.data import journal
from allllm.data.jsonl_rows import rows_to_jsonl
from allllm.data.shards import (
    DATA_SUFFIXES,
    FORMAT_VERSION,
    META_SUFFIX,
    FileInfo,
    ShardIdHasher,
    ShardMeta,
    numpy_dtype,
    utc_iso,
)
from allllm.errors import DataError
from allllm.fsutil import fsync_dir


class _HashingFile:
    """A binary file that hashes what is written to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh: IO[bytes] = path.open("xb")
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.fh.write(data)
        self.sha.update(data)
        self.size += len(data)

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()


class ShardWriter:
    """Streams a token stream into one shard ``<data_dir>/<stem>.*``."""

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
        self._final = {role: f"{stem}{DATA_SUFFIXES[role]}" for role in self.formats}
        self._temp = {role: f".{name}.tmp" for role, name in self._final.items()}
        self._meta_name = f"{stem}{META_SUFFIX}"
        self._meta_temp = f".{self._meta_name}.tmp"
        self._files: dict[str, _HashingFile] = {}
        self._pending = np.empty(0, dtype=np.uint32)  # ids not yet forming a full row
        self._hasher = ShardIdHasher()
        self.n_rows = 0
        self.n_tokens = 0
        self.max_id = -1
        self._done = False
        names = [*self._temp.values(), *self._final.values(), self._meta_temp, self._meta_name]
        try:
            journal.begin(data_dir, stem, names)
            for role, name in self._temp.items():
                self._files[role] = _HashingFile(data_dir / name)
        except OSError as exc:
            self._fail(exc)

    # -- writing ----------------------------------------------------------------------------------
    def add(self, ids: np.ndarray) -> None:
        """Append a chunk of the token stream (any integer array; checked against the vocab)."""
        if ids.size == 0:
            return
        top = int(ids.max())
        if top >= self.vocab_size or int(ids.min()) < 0:
            self.abort()
            raise DataError(
                f"tokenizer produced id {top} but model.vocab_size is {self.vocab_size} "
                f"(shard {self.stem} not written)",
                "raise model.vocab_size to at least the tokenizer's id range",
            )
        self.max_id = max(self.max_id, top)
        stream = ids.astype(np.uint32, copy=False)
        if self._pending.size:
            stream = np.concatenate([self._pending, stream])
        n_full = stream.size // self.seq_len
        if n_full:
            rows = stream[: n_full * self.seq_len].reshape(n_full, self.seq_len)
            self._write_rows(rows)
        self._pending = stream[n_full * self.seq_len :].copy()

    def _write_rows(self, rows: np.ndarray) -> None:
        self._hasher.update(rows)
        try:
            if "jsonl" in self._files:
                self._files["jsonl"].write(rows_to_jsonl(rows, self.id_range))
            if "bin" in self._files:
                block = rows
                if rows.shape[1] < self.seq_len:
                    block = np.full((rows.shape[0], self.seq_len), self.pad_id, dtype=np.uint32)
                    block[:, : rows.shape[1]] = rows
                self._files["bin"].write(block.astype(self.np_dtype).tobytes())
        except OSError as exc:
            self._fail(exc)
        self.n_rows += rows.shape[0]
        self.n_tokens += rows.size

    def has_pending(self) -> bool:
        """True while ids wait for the final (short) row."""
        return bool(self._pending.size)

    # -- completion -------------------------------------------------------------------------------
    def finish(self, **meta_fields: Any) -> ShardMeta:
        """Flush the final (possibly short) row, rename data files, then write the meta last.

        ``meta_fields`` are the caller's meta fields (tokenizer, sources, ...);
        counts, ids and file digests are filled in here.
        """
        last_row_len = self.seq_len if self.n_rows else 0
        if self._pending.size:
            last_row_len = int(self._pending.size)
            self._write_rows(self._pending.reshape(1, -1))
            self._pending = np.empty(0, dtype=np.uint32)
        try:
            for f in self._files.values():
                f.close()
            files = {}
            for role, f in self._files.items():
                files[role] = FileInfo(
                    name=self._final[role], sha256=f.sha.hexdigest(), size=f.size
                )
            meta = ShardMeta(
                format_version=FORMAT_VERSION,
                shard_id=self._hasher.hexdigest(self.seq_len),
                seq_len=self.seq_len,
                dtype=self.dtype,  # type: ignore[arg-type]
                n_rows=self.n_rows,
                n_tokens=self.n_tokens,
                last_row_len=last_row_len,
                max_id=self.max_id,
                files=files,
                created=utc_iso(),
                allllm_version=__version__,
                **meta_fields,
            )
            for role in self._files:
                os.replace(self.data_dir / self._temp[role], self.data_dir / self._final[role])
            fsync_dir(self.data_dir)
            temp = self.data_dir / self._meta_temp
            with temp.open("w", encoding="utf-8") as fh:
                fh.write(json.dumps(meta.model_dump(mode="json"), indent=2) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, self.data_dir / self._meta_name)
            fsync_dir(self.data_dir)
            journal.end(self.data_dir, self.stem)
        except OSError as exc:
            self._fail(exc)
        self._done = True
        return meta

    def abort(self) -> None:
        """Remove every file of this shard (temporary or renamed) and its journal entry."""
        if self._done:
            return
        self._done = True
        for f in self._files.values():
            with contextlib.suppress(OSError):
                f.fh.close()
        with contextlib.suppress(OSError):
            journal.remove_listed_files(self.data_dir, self.stem)

    def _fail(self, exc: OSError) -> None:
        self.abort()
        what = "disk full" if getattr(exc, "errno", None) == 28 else (exc.strerror or str(exc))
        raise DataError(
            f"cannot write shard {self.stem} in {self.data_dir}: {what}",
            "free space or fix permissions and rerun; nothing partial was kept and older shards "
            "are untouched",
        ) from exc
