"""The data dir's tokenize lock, shared by the ranks of one job and refused to any other.

A tokenize *job* (one ``allllm tokenize``, or all ranks of one torchrun / srun / job
array: ``world.World.job_id``) owns ``data/.allllm/tokenize.job``, created with
``O_EXCL``. Each process of the job keeps a heartbeat file,
``data/.allllm/jobs/<job>/rank-<k>``, whose mtime it refreshes every ``expiry / 4``
seconds. flock is not used: it is unreliable on NFS, where the ranks of a cluster job
meet. A holder is alive while one of its heartbeats is fresh (younger than
``expiry``, ``ALLLLM_TOKENIZE_EXPIRY_S``, default 60 s) — a heartbeat on this host
also needs its pid to exist, so a killed local run never blocks the next one. A dead
holder's lock is taken over; a live one is refused in one line.

The process that creates (or takes over) the lock is the job's *owner*: it alone
cleans what dead jobs left and writes the plan, before any other rank writes a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allllm.data.shard_format import STATE_DIR
from allllm.data.tokenize.world import World
from allllm.errors import DataError, FormatVersionError
from allllm.util.atomic import atomic_write_text

__all__ = ["HeldLock", "expiry_seconds", "job_lock", "owner_starting", "rank_alive"]

LOCK_NAME = "tokenize.job"
JOBS_DIR = "jobs"
FORMAT_VERSION = 1


def expiry_seconds() -> float:
    """How old a heartbeat may be and still count as alive."""
    try:
        return max(0.5, float(os.environ.get("ALLLLM_TOKENIZE_EXPIRY_S", "60")))
    except ValueError:
        return 60.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _fresh(path: Path, record: dict[str, Any] | None, host: str) -> bool:
    """A heartbeat (or lock) file that is younger than the expiry and, on this host,
    whose process still exists."""
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return False
    if age > expiry_seconds():
        return False
    if record is not None and record.get("host") == host and isinstance(record.get("pid"), int):
        if record["pid"] == os.getpid():  # this process: alive only while it holds that job
            return record.get("job") in {h.job for h in _held.values()}
        return _pid_alive(record["pid"])
    return True


def rank_alive(data_dir: Path, job: str, rank: int, host: str) -> bool:
    """Whether rank ``rank`` of ``job`` is still running (its heartbeat is fresh)."""
    path = data_dir / STATE_DIR / JOBS_DIR / job / f"rank-{rank}"
    return _fresh(path, _read_json(path), host)


def owner_starting(data_dir: Path, job: str, host: str) -> bool:
    """Whether ``job``'s owner holds the lock but has not written its heartbeat yet.

    A rank that joins a job can get there between the owner's lock and its first
    heartbeat; without this it would take the owner for dead.
    """
    lock = data_dir / STATE_DIR / LOCK_NAME
    holder = _read_json(lock)
    if holder is None or holder.get("job") != job:
        return False
    beat = data_dir / STATE_DIR / JOBS_DIR / job / f"rank-{holder.get('rank')}"
    return not beat.exists() and _fresh(lock, holder, host)


def _job_alive(data_dir: Path, holder: dict[str, Any], lock: Path, host: str) -> bool:
    job = str(holder.get("job", ""))
    folder = data_dir / STATE_DIR / JOBS_DIR / job
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            path = Path(entry.path)
            if entry.name.startswith("rank-") and _fresh(path, _read_json(path), host):
                return True
    # the owner between creating the lock and its first heartbeat
    return _fresh(lock, holder, host) and not folder.exists()


@dataclass
class HeldLock:
    """This process's hold on the job lock."""

    data_dir: Path
    world: World
    owner: bool  # this process created (or took over) the lock: it cleans and plans
    member: Path

    @property
    def job(self) -> str:
        return self.world.job_id


def _refused(data_dir: Path, holder: dict[str, Any] | None) -> DataError:
    who = ""
    if holder:
        who = f" (job {holder.get('job')}, host {holder.get('host')}, pid {holder.get('pid')})"
    return DataError(
        f"another `allllm tokenize` is writing to {data_dir}",
        f"wait for it to finish{who}; its lock lapses {expiry_seconds():.0f} s after its "
        "processes stop",
    )


def _acquire(data_dir: Path, world: World) -> bool:
    """Take or join the lock; True when this process owns it (created or took it over)."""
    state = data_dir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    lock = state / LOCK_NAME
    record = {
        "format_version": FORMAT_VERSION,
        "job": world.job_id,
        "host": world.host,
        "pid": world.pid,
        "rank": world.rank,
        "launcher": world.launcher,
    }
    text = json.dumps(record)
    for _ in range(50):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            return True
        holder = _read_json(lock)
        if holder is None:  # being written, or garbage: wait a moment, then judge by age
            time.sleep(0.05)
            holder = _read_json(lock)
            if holder is None and _fresh(lock, None, world.host):
                continue
        version = (holder or {}).get("format_version")
        if type(version) is int and version > FORMAT_VERSION:
            raise FormatVersionError(
                f"{lock}: tokenize lock of format_version {version}, written by a newer allllm "
                f"(this one reads {FORMAT_VERSION})",
                "run the same allllm version on every rank, or upgrade this one",
            )
        if holder is not None and holder.get("job") == world.job_id:
            return False  # a rank of this job made it: join
        if holder is not None and _job_alive(data_dir, holder, lock, world.host):
            raise _refused(data_dir, holder)
        atomic_write_text(lock, text)  # a dead job's lock: take it over, then check who won
        time.sleep(0.01)
        if (_read_json(lock) or {}).get("job") == world.job_id:
            return True
    raise _refused(data_dir, _read_json(lock))


class _Heartbeat:
    """Refreshes this process's heartbeat file until stopped."""

    def __init__(self, path: Path, record: dict[str, Any]) -> None:
        self.path = path
        self.record = record
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="allllm-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = expiry_seconds() / 4
        while not self._stop.wait(interval):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


_held: dict[str, HeldLock] = {}  # data dir (resolved) -> this process's hold


def held(data_dir: Path) -> HeldLock | None:
    """This process's hold on ``data_dir``'s lock, if any."""
    return _held.get(os.path.realpath(data_dir))


@contextlib.contextmanager
def job_lock(data_dir: Path, world: World) -> Iterator[HeldLock]:
    """Hold (own or join) the data dir's tokenize lock for ``world``'s job."""
    key = os.path.realpath(data_dir)
    if key in _held:
        raise _refused(data_dir, {"job": _held[key].job, "host": world.host, "pid": world.pid})
    owner = _acquire(data_dir, world)
    member = data_dir / STATE_DIR / JOBS_DIR / world.job_id / f"rank-{world.rank}"
    record = {"job": world.job_id, "host": world.host, "pid": world.pid, "rank": world.rank}
    beat = _Heartbeat(member, record)
    hold = HeldLock(data_dir, world, owner, member)
    _held[key] = hold
    try:
        yield hold
    finally:
        _held.pop(key, None)
        beat.stop()
        _release(data_dir, world, member)


def _release(data_dir: Path, world: World, member: Path) -> None:
    """Drop this process's heartbeat; the last live process of the job drops the lock."""
    with contextlib.suppress(FileNotFoundError):
        member.unlink()
    folder = member.parent
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            path = Path(entry.path)
            if entry.name.startswith("rank-") and _fresh(path, _read_json(path), world.host):
                return  # another rank of the job still works
    lock = data_dir / STATE_DIR / LOCK_NAME
    if (_read_json(lock) or {}).get("job") == world.job_id:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
    shutil.rmtree(folder, ignore_errors=True)
