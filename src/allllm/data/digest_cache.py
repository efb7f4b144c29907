"""A stat-keyed cache of whole files' sha256 (``data/.allllm/digests.json``), as git's index.

Deciding that terabytes of sources are up to date, or that a run's shards are intact,
must not read them all each time. A file whose (size, mtime_ns, inode, device) are
those it had when it was hashed gets its recorded digest back without being read.

The "racily clean" rule (git's): an entry whose file's mtime is less than ``RACY_NS``
before the moment it was hashed is not trusted, because an edit in the same tick of
the file system's clock may keep size and mtime; such a file is hashed again (and the
new entry, recorded later, is trusted from then on).

It is only a cache: a missing, unreadable or corrupt file is ignored (the next save
writes a good one), deleting it is always safe, and it holds nothing but digests of
whole files. Two processes saving at once: the last one wins, and the entries the
other added are simply computed again next time.

A cache made with ``trust_own`` (shard checks: train, eval) also trusts what this
process itself hashed, racily clean or not, as long as the stat is unchanged: the
scan and the dataset check of one train start then read a freshly tokenized shard
once, not twice (and a read-only data dir, which keeps no file, still hashes once per
process). An edit in the same clock tick right after such a hash, keeping the size,
would escape the second check, as it escapes the first check it followed anyway;
the next process applies the racy rule again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from allllm.data.shard_format import STATE_DIR
from allllm.errors import FormatVersionError
from allllm.util.atomic import atomic_write_text

__all__ = ["DIGESTS_NAME", "FORMAT_VERSION", "RACY_NS", "DigestCache", "forget_own_digests"]

DIGESTS_NAME = "digests.json"
FORMAT_VERSION = 1
RACY_NS = 2_000_000_000  # mtime this close to the hashing moment: re-hash (racily clean)
_HINT = "upgrade allllm, or delete the file: it is a cache and is rebuilt"

_log = logging.getLogger(__name__)

_Stat = tuple[int, int, int, int]  # size, mtime_ns, ino, dev


class _Source(Protocol):
    """What ``DigestCache.source_digests`` needs of a raw source."""

    path: Path
    size: int


@dataclass(frozen=True)
class _Entry:
    stat: _Stat
    recorded_ns: int  # time.time_ns() taken before hashing
    sha256: str

    def to_json(self) -> list[Any]:
        return [*self.stat, self.recorded_ns, self.sha256]

    @classmethod
    def from_json(cls, value: Any) -> _Entry | None:
        """The entry, or None for anything malformed (dropped: it is only a cache)."""
        if not isinstance(value, list) or len(value) != 6:
            return None
        *numbers, sha = value
        if not all(type(n) is int for n in numbers) or not isinstance(sha, str):
            return None
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            return None
        size, mtime_ns, ino, dev, recorded_ns = numbers
        return cls((size, mtime_ns, ino, dev), recorded_ns, sha)


def _stat_key(st: os.stat_result) -> _Stat:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


# real path -> what this process hashed through a ``trust_own`` cache (see the module doc)
_OWN: dict[str, _Entry] = {}
_OWN_LOCK = threading.Lock()


def forget_own_digests() -> None:
    """Forget what this process hashed (the next check goes by the on-disk cache alone)."""
    with _OWN_LOCK:
        _OWN.clear()


class DigestCache:
    """sha256 of whole files keyed by their real path and stat; safe to use from several
    threads (tokenize hashes on a thread while the main thread plans)."""

    def __init__(
        self, path: Path, entries: dict[str, _Entry] | None = None, *, trust_own: bool = False
    ) -> None:
        self.path = path
        self.trust_own = trust_own  # also trust this process's own hashes (module doc)
        self._entries: dict[str, _Entry] = dict(entries or {})
        self._used: set[str] = set()  # keys looked up or stored by this process
        self._changes = 0  # entries stored (or dropped) so far; saved up to ``_saved``
        self._saved = 0
        self._lock = threading.Lock()

    @classmethod
    def for_data_dir(cls, data_dir: Path, *, trust_own: bool = False) -> DigestCache:
        """The cache of one data dir (``data/.allllm/digests.json``)."""
        return cls.load(Path(data_dir) / STATE_DIR / DIGESTS_NAME, trust_own=trust_own)

    @classmethod
    def load(cls, path: Path, *, trust_own: bool = False) -> DigestCache:
        """Read ``path``; a missing, unreadable or corrupt file gives an empty cache (with a
        warning for the last two). A newer format_version is refused: a newer allllm wrote
        it, and overwriting it would take its entries from that allllm."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path, trust_own=trust_own)
        except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError too
            _log.warning("%s: ignoring the digest cache, it cannot be read (%s)", path, exc)
            return cls(path, trust_own=trust_own)
        version = data.get("format_version") if isinstance(data, dict) else None
        if type(version) is not int or version < 1:
            _log.warning("%s: ignoring the digest cache, it has no format_version", path)
            return cls(path, trust_own=trust_own)
        if version > FORMAT_VERSION:
            raise FormatVersionError(
                f"{path}: digest cache of format_version {version}, written by a newer allllm "
                f"(this one reads up to {FORMAT_VERSION})",
                _HINT,
            )
        raw = data.get("entries")
        if not isinstance(raw, dict):
            _log.warning("%s: ignoring the digest cache, it has no entries", path)
            return cls(path, trust_own=trust_own)
        entries = {k: e for k, v in raw.items() if (e := _Entry.from_json(v)) is not None}
        cache = cls(path, entries, trust_own=trust_own)
        cache._changes = int(len(entries) != len(raw))  # malformed ones go at the next save
        return cache

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def lookup(self, path: str | os.PathLike[str]) -> str | None:
        """The recorded sha256 of the file at ``path`` (symlinks followed), if it is unchanged
        since and was not racily clean; None otherwise (also when it cannot be stat'ed)."""
        key = os.path.realpath(path)
        try:
            st = os.stat(key)
        except OSError:
            return None
        return self._hit(key, _stat_key(st))

    def _hit(self, key: str, stat: _Stat) -> str | None:
        with self._lock:
            self._used.add(key)
            entry = self._entries.get(key)
        if self.trust_own:
            with _OWN_LOCK:
                own = _OWN.get(key)
            if own is not None and own.stat == stat:
                return own.sha256
        if entry is None or entry.stat != stat:
            return None
        if stat[1] >= entry.recorded_ns - RACY_NS:  # racily clean: an edit may hide in the tick
            return None
        return entry.sha256

    def sha256(
        self, path: str | os.PathLike[str], compute: Callable[[], str], *, size: int | None = None
    ) -> str:
        """The file's sha256: recorded, or ``compute()``d and recorded.

        ``size``: the caller wants the digest of exactly that many bytes; a file of another
        size is computed and nothing is recorded (nor looked up). A digest is recorded only
        when the file's stat is the same before and after ``compute()``: a file changing
        while it is read is never recorded. Errors of ``compute`` propagate untouched.
        """
        key = os.path.realpath(path)
        recorded_ns = time.time_ns()
        try:
            before = _stat_key(os.stat(key))
        except OSError:
            return compute()  # it raises its own error, or hashes what it can
        if size is not None and before[0] != size:
            return compute()
        hit = self._hit(key, before)
        if hit is not None:
            return hit
        digest = compute()
        try:
            after = _stat_key(os.stat(key))
        except OSError:
            return digest
        if after == before:
            entry = _Entry(before, recorded_ns, digest)
            with self._lock:
                self._entries[key] = entry
                self._changes += 1
            if self.trust_own:
                with _OWN_LOCK:
                    _OWN[key] = entry
        return digest

    def source_digests(
        self, source_sha256: Callable[[Any, int | None], str]
    ) -> Callable[[Any, int | None], str]:
        """``source_sha256(source, n)`` through the cache where ``n`` is the source's whole
        listed size; prefixes (appended-text checks) are always hashed."""

        def digest(source: _Source, n: int | None) -> str:
            if n is None or n != source.size:
                return source_sha256(source, n)
            return self.sha256(source.path, lambda: source_sha256(source, n), size=n)

        return digest

    def save(self) -> bool:
        """Write the cache atomically if anything changed; True when it was written.

        Entries this process never used whose files are gone are dropped. An OSError
        (a read-only data dir, a full disk) is logged at debug level and ignored: the
        digests are computed again next time.
        """
        with self._lock:
            if self._changes == self._saved:
                return False
            changes, entries, used = self._changes, dict(self._entries), set(self._used)
        gone = [k for k in entries if k not in used and not os.path.exists(k)]
        for key in gone:
            del entries[key]
        doc = {
            "format_version": FORMAT_VERSION,
            "entries": {k: e.to_json() for k, e in sorted(entries.items())},
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(doc, separators=(",", ":")) + "\n")
        except OSError as exc:
            _log.debug("%s: digest cache not saved (%s)", self.path, exc)
            return False
        with self._lock:
            for key in gone:
                if key not in self._used:
                    self._entries.pop(key, None)
            self._saved = changes
        return True
