"""The tokenize journal (docs/design.md: shards): nothing half-written is ever taken for a shard.

Before writing a shard, tokenize records its stem and every file name it may
create in ``data/.allllm/inflight/<stem>``. Scans ignore journaled stems; the
entry is removed only after the meta file (written last) is in place. A later
tokenize deletes the files a leftover entry names — and only those — so a crash
at any moment leaves nothing that ``status`` or ``train`` could pick up, and
never touches a file the journal does not list.

A kill while an entry itself is being written leaves its temporary,
``inflight/.<stem>.<8 random chars>.tmp`` (``util.atomic``'s mkstemp name): the
shard had not started, so that file alone is removed. Nothing else in the folder
is touched unless its name is provably ours.

A tokenize holds ``data/.allllm/tokenize.lock`` for its whole run so two of
them never clean up each other's work in progress: the cleanup refuses to run
in a process that does not hold it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from allllm.data.shard_format import (
    INFLIGHT_DIR,
    META_SUFFIX,
    STATE_DIR,
    inflight_dir,
    journaled_stems,
    parse_shard_name,
)
from allllm.errors import DataError
from allllm.util.atomic import atomic_writer, fsync_dir
from allllm.util.faults import fault_point
from allllm.util.flock import exclusive_flock

# the temporary ``atomic_writer`` makes for an entry: ``.<entry name>.`` + mkstemp's 8 random
# characters (lowercase letters, digits, ``_``) + ``.tmp``
_ENTRY_TEMP_RE = re.compile(r"^\.(?P<stem>.+)\.[a-z0-9_]{8}\.tmp$")

_held: set[str] = set()  # data dirs whose tokenize lock this process holds (resolved paths)


def begin(data_dir: Path, stem: str, files: list[str]) -> Path:
    """Record that ``files`` (names inside ``data_dir``) are about to be written for ``stem``."""
    folder = inflight_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    entry = folder / stem
    with atomic_writer(entry, "w") as fh:
        fh.write(json.dumps({"stem": stem, "files": files, "pid": os.getpid()}))
        fh.flush()
        fault_point("tokenize.journal")  # the entry's temporary written, not yet renamed
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


def is_shard_stem(stem: str) -> bool:
    """True for a name tokenize gives shards (``<source>.cached.<L>.<ts>[.k]``)."""
    parsed = parse_shard_name(f"{stem}{META_SUFFIX}")
    return parsed is not None and parsed.stem == stem


def entry_temporaries(data_dir: Path) -> dict[str, list[str]]:
    """stem -> the temporaries of its journal entry left in the inflight folder (by a kill
    between the entry's mkstemp and its rename). Only names of that exact pattern for a shard
    stem: anything else there is not provably ours."""
    found: dict[str, list[str]] = {}
    try:
        entries = list(os.scandir(inflight_dir(data_dir)))
    except FileNotFoundError:
        return found
    for e in sorted(entries, key=lambda e: e.name):
        m = _ENTRY_TEMP_RE.match(e.name)
        if m and is_shard_stem(m["stem"]) and e.is_file(follow_symlinks=False):
            found.setdefault(m["stem"], []).append(e.name)
    return found


def clean_leftovers(data_dir: Path) -> dict[str, list[str]]:
    """Remove what killed tokenize runs left behind: journaled files, and the temporaries of
    entries that were never renamed into place (their shard had not started: nothing else of
    it exists). Returns stem -> what was removed. Only under this process's tokenize lock."""
    if _lock_key(data_dir) not in _held:
        raise RuntimeError(f"clean_leftovers({data_dir}) needs the data dir's tokenize lock")
    cleaned: dict[str, list[str]] = {}
    folder = inflight_dir(data_dir)
    for stem, temps in entry_temporaries(data_dir).items():
        for name in temps:
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
        cleaned[stem] = [f"{INFLIGHT_DIR}/{name}" for name in temps]
    if cleaned:
        fsync_dir(folder)
    for stem in sorted(journaled_stems(data_dir)):
        cleaned[stem] = [*cleaned.get(stem, []), *remove_listed_files(data_dir, stem)]
    return dict(sorted(cleaned.items()))


def _lock_key(data_dir: Path) -> str:
    return os.path.realpath(data_dir)


@contextlib.contextmanager
def tokenize_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data dir's tokenize lock; a second tokenize on the same dir is refused."""

    def refused(_holder: str) -> DataError:
        return DataError(
            f"another `allllm tokenize` is writing to {data_dir}",
            "wait for it to finish (the lock is released when it exits)",
        )

    with exclusive_flock(data_dir / STATE_DIR / "tokenize.lock", str(os.getpid()), refused):
        key = _lock_key(data_dir)
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
