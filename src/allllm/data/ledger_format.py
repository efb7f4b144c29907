"""The document ledger's segment file format: header, ``SegmentRef``, reading a segment.

A segment ``seg-<first 16 hex of its sha256>.ledger`` is a 32-byte header
(magic ``b"ALLLLEDG"``, ``format_version`` uint32, record size uint32 (24),
record count uint64, 8 zero bytes, little-endian) and then ``count`` records of
:data:`RECORD_DTYPE`, sorted by (hi, lo, kind), one per (hi, lo, kind). Kept
apart from writing and merging (:mod:`allllm.data.ledger_merge`) and reading
(:mod:`allllm.data.ledger`, the module to import) so each stays small.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from allllm.errors import DataError
from allllm.util.versions import FileFormat

LEDGER_DIR = "ledger"
#: ledger segment files: version 1 is the only one so far
LEDGER_FORMAT = FileFormat("ledger segment", current=1)
KIND_TRAINED = 1
KIND_HELD_OUT = 2
RECORD_DTYPE = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("step", "<u4"), ("kind", "<u4")])
MAGIC = b"ALLLLEDG"
HEADER_SIZE = 32
SEGMENT_RE = re.compile(r"^seg-([0-9a-f]{16})\.ledger$")
TEMP_RE = re.compile(r"^\.seg-[0-9]+-[0-9a-f]{8}\.ledger\.tmp$")
REPAIR_HINT = (
    "run allllm train again (it rebuilds a lost or damaged segment from the seen shards) "
    "or restore the ledger folder from a backup"
)
_HEADER = struct.Struct("<8sIIQ8x")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_REF_KEYS = {"name", "sha256", "count"}
_HASH_CHUNK = 8 << 20

assert _HEADER.size == HEADER_SIZE and RECORD_DTYPE.itemsize == 24


@dataclass(frozen=True)
class SegmentRef:
    """One segment as a checkpoint lists it: file name, sha256 of the whole file, records."""

    name: str
    sha256: str
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "count": self.count}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> SegmentRef:
        """The entry ``data`` (from ``where``), checked; DataError (one line) when malformed."""
        why = _ref_problem(data)
        if why:
            raise DataError(
                f"{where}: ledger segment entry {why}",
                "restore the checkpoint's trainer_state.json or train from another checkpoint",
            )
        return cls(data["name"], data["sha256"], data["count"])


def _ref_problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return f"is a {type(data).__name__}, not an object"
    if set(data) != _REF_KEYS:
        return f"has keys {sorted(data)}, expected ['count', 'name', 'sha256']"
    name, sha, count = data["name"], data["sha256"], data["count"]
    match = SEGMENT_RE.match(name) if isinstance(name, str) else None
    if match is None:
        return f"name {name!r} is not seg-<16 hex digits>.ledger"
    if not isinstance(sha, str) or not _SHA_RE.match(sha):
        return f"{name}: sha256 {sha!r} is not 64 lowercase hex digits"
    if match.group(1) != sha[:16]:
        return f"{name}: its name does not match its sha256 {sha[:16]}..."
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return f"{name}: count {count!r} is not a record count"
    return None


# --- the file format ----------------------------------------------------------------------


def _header(count: int) -> bytes:
    return _HEADER.pack(MAGIC, LEDGER_FORMAT.current, RECORD_DTYPE.itemsize, count)


def header_problem(head: bytes, size: int, where: str, listed: int | None = None) -> str | None:
    """What is wrong with a segment's header and size (None: nothing).

    ``listed`` is the count its checkpoint lists. A newer format is valid, so it is
    never a problem: :class:`~allllm.errors.FormatVersionError` (one line).
    """
    if len(head) < HEADER_SIZE:
        return f"truncated ({size} bytes, no whole header)"
    magic, version, record_size, count = _HEADER.unpack(head)
    if magic != MAGIC:
        return "not a ledger segment (wrong magic)"
    if version < 1:
        return f"of format_version {version}"
    LEDGER_FORMAT.refuse_newer(version, where)
    if record_size != RECORD_DTYPE.itemsize:
        return f"records of {record_size} bytes, expected {RECORD_DTYPE.itemsize}"
    if listed is not None and count != listed:
        return f"holds {count} records, its checkpoint lists {listed}"
    expected = HEADER_SIZE + count * RECORD_DTYPE.itemsize
    if size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        return f"{what}: {size} bytes, its header says {count} records ({expected} bytes)"
    return None


def file_sha256(path: Path) -> str | None:
    """The sha256 of a file, read in chunks (None when it cannot be read)."""
    sha = hashlib.sha256()
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    try:
        with path.open("rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                sha.update(view[:n])
    except OSError:
        return None
    return sha.hexdigest()


class SegmentReader:
    """An open segment, header checked against its ref, read with plain reads (never mapped:
    mapped pages would count in the process's resident memory)."""

    def __init__(self, ledger_dir: Path, ref: SegmentRef) -> None:
        self.path = Path(ledger_dir) / ref.name
        self.count = ref.count
        try:
            self._fh = self.path.open("rb", buffering=0)
        except FileNotFoundError:
            raise DataError(f"{self.path}: ledger segment not found", REPAIR_HINT) from None
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        try:
            head = self.read_at(0, HEADER_SIZE)
            why = header_problem(
                head, os.fstat(self._fh.fileno()).st_size, str(self.path), ref.count
            )
        except BaseException:
            self._fh.close()
            raise
        if why:
            self._fh.close()
            raise DataError(f"{self.path}: ledger segment {why}", REPAIR_HINT)

    def __enter__(self) -> SegmentReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._fh.close()

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer only at the end of the file)."""
        out = bytearray(size)
        return bytes(out[: self._fill(offset, memoryview(out), short_ok=True)])

    def _fill(self, offset: int, view: memoryview, *, short_ok: bool = False) -> int:
        done = 0
        try:
            self._fh.seek(offset)
            while done < len(view):
                n = self._fh.readinto(view[done:])
                if not n:
                    break
                done += n
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        if done < len(view) and not short_ok:
            raise DataError(f"{self.path}: ledger segment truncated while reading", REPAIR_HINT)
        return done

    def record(self, index: int) -> np.void:
        """Record ``index`` alone (one small read)."""
        out = np.empty(1, RECORD_DTYPE)
        return self.read_into(index, out)[0]

    def read_into(self, first: int, out: np.ndarray) -> np.ndarray:
        """Records ``first`` .. ``first + out.size`` read into ``out`` (returned)."""
        self._fill(HEADER_SIZE + first * RECORD_DTYPE.itemsize, memoryview(out).cast("B"))
        return out


# --- sorting and writing ------------------------------------------------------------------
