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

A tokenize holds the data dir's job lock (``joblock``) for its whole run so two
jobs never clean up each other's work in progress: the cleanup refuses to run in
a process that does not hold it. Entries record who writes them (job, rank, host,
pid): an entry whose writer still runs — another rank of this job — is never
touched; one whose writer died is a leftover.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from allllm.data.shard_format import (
    INFLIGHT_DIR,
    META_SUFFIX,
    inflight_dir,
    journaled_stems,
    parse_shard_name,
)
from allllm.util.atomic import atomic_writer, fsync_dir
from allllm.util.faults import fault_point

# the temporary ``atomic_writer`` makes for an entry: ``.<entry name>.`` + mkstemp's 8 random
# characters (lowercase letters, digits, ``_``) + ``.tmp``
_ENTRY_TEMP_RE = re.compile(r"^\.(?P<stem>.+)\.[a-z0-9_]{8}\.tmp$")

_owner: dict[str, Any] = {}  # who this process is in its job (``set_owner``), in every entry


def set_owner(job: str, rank: int, host: str) -> None:
    """Name this process in the entries it writes (tokenize calls it once it holds the lock)."""
    _owner.clear()
    _owner.update(job=job, rank=rank, host=host)


def begin(data_dir: Path, stem: str, files: list[str]) -> Path:
    """Record that ``files`` (names inside ``data_dir``) are about to be written for ``stem``."""
    return _write_entry(data_dir, stem, files, exclusive=False)


def begin_new(data_dir: Path, stem: str, files: list[str]) -> Path:
    """``begin`` for a new shard's stem, which another rank may pick at the same moment: the
    entry is linked into place only if none exists (FileExistsError if one does), so of two
    ranks only one writes a stem."""
    return _write_entry(data_dir, stem, files, exclusive=True)


def _write_entry(data_dir: Path, stem: str, files: list[str], *, exclusive: bool) -> Path:
    folder = inflight_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    entry = folder / stem
    record = {"stem": stem, "files": files, "pid": os.getpid(), **_owner}
    if exclusive:
        temp = folder / f".{stem}.{_tag()}.tmp"
        try:
            with open(temp, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(record))
                fh.flush()
                os.fsync(fh.fileno())
                fault_point("tokenize.journal")  # the entry's temporary written, not yet linked
            os.link(temp, entry)  # fails if the entry exists: atomic also on NFS
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        fsync_dir(folder)
        return entry
    with atomic_writer(entry, "w") as fh:
        fh.write(json.dumps(record))
        fh.flush()
        fault_point("tokenize.journal")  # the entry's temporary written, not yet renamed
    return entry


def _tag() -> str:
    """8 characters of ``[a-z0-9_]`` (the pattern of leftover entry temporaries)."""
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def writer_of(data_dir: Path, stem: str) -> dict[str, Any]:
    """The record of ``stem``'s entry ({} when it cannot be read)."""
    try:
        record = json.loads((inflight_dir(data_dir) / stem).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


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
    it exists). Returns stem -> what was removed. Only by the owner of the data dir's job
    lock (before any other rank of its job writes); entries of live writers are kept."""
    from allllm.data.tokenize.joblock import held, rank_alive

    hold = held(data_dir)
    if hold is None or not hold.owner:
        raise RuntimeError(f"clean_leftovers({data_dir}) needs the data dir's tokenize lock")
    cleaned: dict[str, list[str]] = {}
    folder = inflight_dir(data_dir)

    def alive(stem: str) -> bool:
        rec = writer_of(data_dir, stem)
        if rec.get("job") != hold.job or not isinstance(rec.get("rank"), int):
            return False
        return rec["rank"] != hold.world.rank and rank_alive(
            data_dir, hold.job, rec["rank"], hold.world.host
        )

    for stem, temps in entry_temporaries(data_dir).items():
        for name in temps:
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
        cleaned[stem] = [f"{INFLIGHT_DIR}/{name}" for name in temps]
    if cleaned:
        fsync_dir(folder)
    for stem in sorted(journaled_stems(data_dir)):
        if alive(stem):
            continue
        cleaned[stem] = [*cleaned.get(stem, []), *remove_listed_files(data_dir, stem)]
    return dict(sorted(cleaned.items()))


def clean_rank(data_dir: Path, job: str, rank: int) -> dict[str, list[str]]:
    """Remove the journaled files of one dead rank of ``job`` (whoever takes over its work)."""
    cleaned = {}
    for stem in sorted(journaled_stems(data_dir)):
        rec = writer_of(data_dir, stem)
        if rec.get("job") == job and rec.get("rank") == rank:
            cleaned[stem] = remove_listed_files(data_dir, stem)
    return cleaned


@contextlib.contextmanager
def tokenize_lock(data_dir: Path, world: Any = None) -> Iterator[Any]:
    """Hold the data dir's tokenize lock (``joblock.job_lock``) for ``world``'s job, a lone
    process by default; another job on the same dir is refused."""
    from allllm.data.tokenize.joblock import job_lock
    from allllm.data.tokenize.world import resolve_world

    world = world or resolve_world(env={})
    with job_lock(data_dir, world) as hold:
        set_owner(world.job_id, world.rank, world.host)
        try:
            yield hold
        finally:
            _owner.clear()
