"""The tokenize journal (docs/design.md: shards): nothing half-written is ever taken for a shard.

Before writing a shard, tokenize records its stem and every file name it may
create in ``data/.allllm/inflight/<stem>``. Scans ignore journaled stems; the
entry is removed only after the meta file (written last) is in place. A later
tokenize deletes the files a leftover entry names — and only those — so a crash
at any moment leaves nothing that ``status`` or ``train`` could pick up, and
never touches a file the journal does not list.

A tokenize holds ``data/.allllm/tokenize.lock`` for its whole run so two of
them never clean up each other's work in progress.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from allllm.data.shard_format import INFLIGHT_DIR, STATE_DIR
from allllm.errors import DataError
from allllm.util.atomic import atomic_write_text, fsync_dir


def inflight_dir(data_dir: Path) -> Path:
    return data_dir / INFLIGHT_DIR


def journaled_stems(data_dir: Path) -> set[str]:
    """Stems with a journal entry: a tokenize is writing them, or crashed while it did."""
    folder = inflight_dir(data_dir)
    try:
        return {e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")}
    except FileNotFoundError:
        return set()


def begin(data_dir: Path, stem: str, files: list[str]) -> Path:
    """Record that ``files`` (names inside ``data_dir``) are about to be written for ``stem``."""
    folder = inflight_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    entry = folder / stem
    atomic_write_text(entry, json.dumps({"stem": stem, "files": files, "pid": os.getpid()}))
    return entry


def end(data_dir: Path, stem: str) -> None:
    """The shard is complete (its meta is in place): drop its journal entry durably."""
    entry = inflight_dir(data_dir) / stem
    with contextlib.suppress(FileNotFoundError):
        entry.unlink()
    fsync_dir(entry.parent)


def remove_listed_files(data_dir: Path, stem: str) -> list[str]:
    """Delete the files the journal entry of ``stem`` names, then the entry. Returns what was removed."""
    entry = inflight_dir(data_dir) / stem
    try:
        record = json.loads(entry.read_text(encoding="utf-8"))
        names = [str(n) for n in record.get("files", [])]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, AttributeError):
        names = []  # unreadable entry: remove nothing but the entry itself
    removed = []
    for name in names:
        if "/" in name or name in ("", ".", ".."):
            continue  # never follow a path out of data_dir
        path = data_dir / name
        try:
            path.unlink()
            removed.append(name)
        except FileNotFoundError:
            pass
    fsync_dir(data_dir)
    end(data_dir, stem)
    return removed


def clean_leftovers(data_dir: Path) -> dict[str, list[str]]:
    """Remove what crashed tokenize runs left behind (journaled files only)."""
    return {stem: remove_listed_files(data_dir, stem) for stem in sorted(journaled_stems(data_dir))}


@contextlib.contextmanager
def tokenize_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data dir's tokenize lock; a second tokenize on the same dir is refused."""
    state = data_dir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    path = state / "tokenize.lock"
    fh = path.open("a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(
                f"another `allllm tokenize` is writing to {data_dir}",
                "wait for it to finish (the lock is released when it exits)",
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()
