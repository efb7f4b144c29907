"""Crash-safe file writes: temp file, fsync, rename, fsync the directory.

Every file that other runs rely on (seen records, configs, shard meta,
checkpoint state) goes through here, so a crash or a full disk leaves either
the old file or the new one, never a torn one.

``tempfile.mkstemp`` creates its file 0600 whatever the umask, so without care
every atomically written file would be unreadable by teammates on a shared
machine while every other file is 0644 under umask 022. The temporary file is
therefore given the mode a plain ``open(path, "w")`` gives a new file,
``0o666 & ~umask``, before the rename. A replaced file gets that mode too (so a
file left 0600 by an older allllm heals on its next write).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _read_umask() -> int:
    """The process umask. ``os.umask`` can only be read by setting it, process-wide, so it
    is read once, here; should another thread create a file in that instant, 0o077 makes
    it private rather than world-writable."""
    old = os.umask(0o077)
    os.umask(old)
    return old


# First imported by a module's top-level imports or a verb on the main thread, before any
# worker thread that writes files starts.
_UMASK = _read_umask()


def file_mode() -> int:
    """Permission bits of a new file, as ``open(path, "w")`` would create it (0644 under 022)."""
    return 0o666 & ~_UMASK


def set_umask_mode(path: str | os.PathLike[str]) -> None:
    """Give a file a library wrote the mode of ``file_mode()``.

    safetensors 0.8 writes ``save_file`` output through a 0600 temporary file
    (safetensors#782), unlike torch.save and tokenizers, which honour the umask.
    """
    os.chmod(path, file_mode())


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or create inside ``path`` durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of ``path``; on success fsync and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is untouched. The
    result has ``file_mode()`` (0644 under umask 022), like any file we create.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            os.fchmod(fh.fileno(), file_mode())  # mkstemp made it 0600
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` atomically."""
    with atomic_writer(path, "w") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_writer(path, "wb") as fh:
        fh.write(data)
