"""The files a shard writer fills: hashed as written, fsynced in the background.

Apart from ``write`` so that the writer reads as the shard's life cycle alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np

from allllm.data.shard_format import ShardIdHasher


class _StreamHasher(ShardIdHasher):
    """``shard_id`` hashing that takes uint32 row blocks without a copy and can hand out the
    hash of the stream so far: that is the ``.bin`` file's hash too when its dtype is uint32,
    so those bytes are hashed once, not twice."""

    def update(self, ids: Any) -> None:
        if isinstance(ids, np.ndarray) and ids.dtype == np.dtype("<u4"):
            self._h.update(_bytes_of(ids))
        else:
            super().update(ids)

    def stream_hash(self) -> Any:
        """A copy of the sha256 state over the stream's bytes (uint32 LE) so far."""
        return self._h.copy()


class _HashingFile:
    """A binary file that hashes what is written to it (unless its hash comes from elsewhere).

    Every ``SYNC_BYTES`` written, a background thread fdatasyncs what is there, so the
    disk writes overlap the encoding and the final fsync has little left to wait for.
    An error of such a sync (a full disk shows up there too) is raised by the next write.
    """

    SYNC_BYTES = 16 << 20

    def __init__(self, path: Path, timings: dict[str, float], *, hashed: bool = True) -> None:
        self.path = path
        self.fh: IO[bytes] = path.open("xb")
        self.sha: Any = hashlib.sha256() if hashed else None
        self.size = 0
        self.timings = timings
        self._synced = 0
        self._sync: Future[None] | None = None
        self._syncer: ThreadPoolExecutor | None = None

    def write(self, data: memoryview) -> None:
        t0 = time.thread_time()
        if self.sha is not None:
            self.sha.update(data)
        t1 = time.thread_time()
        self.fh.write(data)
        self.timings["hash"] += t1 - t0
        self.timings["write"] += time.thread_time() - t1
        self.size += len(data)
        if self.size - self._synced >= self.SYNC_BYTES:
            self._sync_in_background()

    def _sync_in_background(self) -> None:
        if self._sync is not None:
            if not self._sync.done():
                return
            self._sync.result()  # raises the OSError of a failed sync
        self.fh.flush()
        self._synced = self.size
        if self._syncer is None:
            self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="allllm-fsync")
        self._sync = self._syncer.submit(os.fdatasync, self.fh.fileno())

    def _join(self) -> None:
        """Wait for the background sync (before the file descriptor goes away)."""
        if self._syncer is not None:
            self._syncer.shutdown(wait=True)
            self._syncer = None
        sync, self._sync = self._sync, None
        if sync is not None:
            sync.result()

    def close(self) -> None:
        if not self.fh.closed:
            self._join()
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()

    def discard(self) -> None:
        """Close without syncing (the file is about to be removed); errors do not matter."""
        with contextlib.suppress(OSError):
            self._join()
        with contextlib.suppress(OSError):
            self.fh.close()


def _bytes_of(arr: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, without a copy."""
    return memoryview(np.ascontiguousarray(arr)).cast("B")
