"""One trainer per checkpoint directory (docs/design.md: checkpoints).

An exclusive ``flock`` on ``<checkpoint_dir>/lock``. The kernel drops the lock
when the holder dies, so a lock left by a killed process never blocks the next
run. flock is not reliable on NFS; the README says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from allllm.errors import AllllmError, LockError
from allllm.train.distributed import DistInfo, broadcast_object
from allllm.util.flock import exclusive_flock


@contextlib.contextmanager
def checkpoint_dir_lock(checkpoint_dir: Path) -> Iterator[None]:
    """Hold the directory's lock for the block; a second holder gets a clear LockError."""

    def refused(holder: str) -> LockError:
        try:
            info = json.loads(holder)
            who = f" (pid {info.get('pid')} on {info.get('host')})"
        except (ValueError, AttributeError):
            who = ""
        return LockError(
            f"another `allllm train` is using {checkpoint_dir}{who}",
            "wait for it to finish, or stop it (it saves a checkpoint on Ctrl-C / SIGTERM)",
        )

    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
    with exclusive_flock(checkpoint_dir / "lock", me, refused):
        yield


@contextlib.contextmanager
def rank0_lock(path: Path, info: DistInfo) -> Iterator[None]:
    """Rank 0 holds the checkpoint-dir lock; a refusal is raised on every rank."""
    with contextlib.ExitStack() as stack:
        error: AllllmError | None = None
        if info.is_main:
            try:
                stack.enter_context(checkpoint_dir_lock(path))
            except AllllmError as exc:
                error = exc
        error = broadcast_object(error, info)
        if error is not None:
            raise error
        yield
