"""An exclusive, non-blocking ``flock`` on a file, holding who took it.

The trainer's lock (one trainer per checkpoint dir); tokenize's data-dir lock uses
heartbeat files instead (``data.tokenize.joblock``), since a cluster's ranks meet on NFS.
The kernel drops a flock when its holder dies, so a lock left by a killed process never
blocks the next one. flock is not reliable on NFS (README).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive_flock(path: Path, holder: str, refused: Callable[[str], Exception]) -> Iterator[None]:
    """Hold ``path``'s lock for the block, writing ``holder`` into it.

    When another process holds it, ``refused(what that holder wrote)`` is raised.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise refused(fh.read().strip()) from None
        fh.seek(0)
        fh.truncate()
        fh.write(holder)
        fh.flush()
        yield
    finally:
        fh.close()
