"""Seen records: which shards the model has trained on (docs/design.md: seen records and runs).

``<checkpoint_dir>/seen_datasets.json`` is a *view* of the latest checkpoint's
cumulative map (``trainer_state.json`` carries the same map): the checkpoint is
the truth and the file is what users and scripts read. This module is the only
code that reads or writes the file, so its schema is checked in one place:

- reads are strict — a hand-edited file with ``rows`` as a string or an
  unknown key is *unreadable*, never half-trusted;
- versions follow :mod:`allllm.util.versions`: an older ``format_version`` is
  migrated, a newer one (a newer allllm wrote the file) is a one-line error,
  never taken for a broken file and never rebuilt;
- writes are atomic (temp file, fsync, rename), so a crash leaves the old file;
- an unreadable file is never overwritten silently: it is rebuilt from the
  latest checkpoint (the broken one kept as ``seen_datasets.json.corrupt-<ts>``)
  or, with no checkpoint, it is a one-line error saying how to fix it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from allllm.errors import DataError
from allllm.util.atomic import atomic_write_text
from allllm.util.clock import utc_timestamp
from allllm.util.versions import FileFormat

SEEN_FILE = "seen_datasets.json"
#: (val_seed, val_fraction): the split that decides a shard's validation rows
Split = tuple[int, float]


def _pin_splits(data: dict[str, Any], *, legacy_split: Split | None = None) -> dict[str, Any]:
    """Version 1 → 2: every record gains the split it was trained with.

    Version 1 did not store it; the runs that wrote those records used the config of
    their time, and the best record of that left is the latest checkpoint's config
    snapshot, which the reader passes as ``legacy_split`` (the current config when no
    checkpoint exists). A one-time migration: the next write stores version 2.
    """
    if legacy_split is None:  # a caller's bug, never a broken file: not a DataError
        raise ValueError("version-1 seen records are read only with a legacy_split")
    shards = data.get("shards")
    if isinstance(shards, dict):
        data["shards"] = records_with_split(shards, legacy_split)
    return data


def records_with_split(records: dict[str, Any], split: Split) -> dict[str, Any]:
    """Version-1 records (JSON objects) given ``split`` where they have none (for migrations).

    Anything that is not an object is left for validation to refuse.
    """
    seed, fraction = split
    return {
        sid: {"val_seed": seed, "val_fraction": fraction, **rec} if isinstance(rec, dict) else rec
        for sid, rec in records.items()
    }


def _add_row_filters(data: dict[str, Any], **_context: Any) -> dict[str, Any]:
    """Version 2 → 3: records gain the optional edit-aware row counts; absent means none."""
    return data


#: seen_datasets.json: version 2 added each shard's validation split (val_seed, val_fraction);
#: version 3 the rows the document ledger kept from training or validation (row filters)
SEEN_FORMAT = FileFormat(
    "seen records", current=3, migrations={1: _pin_splits, 2: _add_row_filters}
)
SEEN_FORMAT_VERSION = SEEN_FORMAT.current
SHARD_ID_RE = re.compile(r"^[0-9a-f]{64}$")

_log = logging.getLogger("allllm")

ShardId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
#: a record's optional fields of the row filter (data/row_filter.py), stored only when set
ROW_FILTER_KEYS = (
    "not_trained", "val_dropped", "skipped_rows", "skipped_tokens", "held_out_rows", "dedup_rows",
)  # fmt: skip
RowRange = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)]
Warn = Callable[[str], None]


class SeenRecord(BaseModel):
    """One trained shard: its files when trained, training rows and tokens, the step it finished."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    files: dict[Literal["jsonl", "bin"], Annotated[str, StringConstraints(min_length=1)]]
    rows: int = Field(ge=0)
    tokens: int = Field(ge=0)
    step: int = Field(ge=0)
    run_id: str
    completed: Annotated[
        str, StringConstraints(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
    ]
    # the split fixed when the shard was first planned into a run of this model: its
    # validation rows stay held out whatever train.seed / data.val_fraction say later
    val_seed: int
    val_fraction: float = Field(ge=0.0, lt=1.0)
    # the rows the document ledger kept out when the shard was first planned (row_filter.py):
    # training rows of the split that did not train, validation rows not used, and why
    not_trained: list[RowRange] = Field(default_factory=list)
    val_dropped: list[RowRange] = Field(default_factory=list)
    skipped_rows: int = Field(default=0, ge=0)
    skipped_tokens: int = Field(default=0, ge=0)
    held_out_rows: int = Field(default=0, ge=0)
    dedup_rows: int = Field(default=0, ge=0)

    @property
    def split(self) -> Split:
        return self.val_seed, self.val_fraction

    @property
    def row_filter(self) -> dict[str, Any]:
        """The stored row filter (``RowFilter.from_dict`` reads it)."""
        return {key: getattr(self, key) for key in ROW_FILTER_KEYS}

    def to_json(self) -> dict[str, Any]:
        """The record as stored: the optional row-filter fields only when they say something."""
        out = self.model_dump(mode="json")
        for key in ROW_FILTER_KEYS:
            if not out[key]:
                del out[key]
        return out


class _SeenFile(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    format_version: int
    shards: dict[ShardId, SeenRecord]


class SeenMap:
    """shard_id → :class:`SeenRecord`. Plain mapping semantics; serializes to ``seen_datasets.json``."""

    def __init__(self, records: Mapping[str, SeenRecord] | None = None) -> None:
        self._records: dict[str, SeenRecord] = dict(records or {})

    # mapping protocol ----------------------------------------------------------------------
    def __contains__(self, shard_id: object) -> bool:
        return shard_id in self._records

    def __getitem__(self, shard_id: str) -> SeenRecord:
        return self._records[shard_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SeenMap) and self._records == other._records

    def __repr__(self) -> str:
        return f"SeenMap({len(self._records)} shards)"

    def get(self, shard_id: str | None) -> SeenRecord | None:
        return self._records.get(shard_id) if shard_id else None

    def items(self) -> Iterator[tuple[str, SeenRecord]]:
        return iter(self._records.items())

    # updates -------------------------------------------------------------------------------
    def with_records(self, records: Mapping[str, SeenRecord]) -> SeenMap:
        """A new map with ``records`` added (a re-trained shard keeps its latest record)."""
        for shard_id in records:
            _check_shard_id(shard_id)
        return SeenMap({**self._records, **records})

    # (de)serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``seen_datasets.json`` object; shards in training order (step, then id) so the file reads as a log."""
        ordered = sorted(self._records.items(), key=lambda kv: (kv[1].step, kv[1].completed, kv[0]))
        return {
            "format_version": SEEN_FORMAT_VERSION,
            "shards": {sid: rec.to_json() for sid, rec in ordered},
        }

    @classmethod
    def from_dict(
        cls,
        data: Any,
        source: str = "seen records",
        *,
        allow_bare: bool = True,
        legacy_split: Split | None = None,
    ) -> SeenMap:
        """Validate the ``seen_datasets.json`` object (or, with ``allow_bare``, its bare ``shards`` mapping).

        Anything else is a DataError naming ``source`` and the first wrong field; a newer
        ``format_version`` is a FormatVersionError (never a broken file). A bare map is in
        the current format (trainer states migrate their own); a version-1 file takes
        ``legacy_split`` for its records (:func:`_pin_splits`).
        """
        bare = isinstance(data, dict) and "format_version" not in data and "shards" not in data
        if allow_bare and bare:
            data = {"format_version": SEEN_FORMAT_VERSION, "shards": data}  # a bare shards map
        if SEEN_FORMAT.version_of(data) is not None:
            data = SEEN_FORMAT.upgrade(data, source, legacy_split=legacy_split)
        try:
            parsed = _SeenFile.model_validate(data)
        except ValidationError as exc:
            raise DataError(f"{source}: {_first_error(exc)}") from None
        return cls(parsed.shards)


def _check_shard_id(shard_id: str) -> None:
    if not SHARD_ID_RE.match(shard_id):
        raise DataError(f"{shard_id!r} is not a shard_id (64 lowercase hex digits)")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(x) for x in err["loc"]) or "(top level)"
    return f"{where}: {err['msg'].removeprefix('Value error, ')}"


def seen_path(checkpoint_dir: str | os.PathLike[str]) -> Path:
    """Where a checkpoint dir keeps its seen records."""
    return Path(checkpoint_dir) / SEEN_FILE


def _as_seen_map(value: SeenMap | Mapping[str, Any], source: str) -> SeenMap:
    return value if isinstance(value, SeenMap) else SeenMap.from_dict(dict(value), source)


def read_seen(path: Path, legacy_split: Split | None = None) -> SeenMap:
    """Read and validate the file strictly; DataError (one line) if it is unreadable or invalid.

    ``legacy_split`` is the split a version-1 file's records take (see :func:`_pin_splits`).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}") from None
    return SeenMap.from_dict(data, str(path), allow_bare=False, legacy_split=legacy_split)


def stored_version(path: Path) -> int | None:
    """The ``format_version`` of the file at ``path`` (None when missing or unreadable)."""
    try:
        return SEEN_FORMAT.version_of(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def save_seen(path: str | os.PathLike[str], seen: SeenMap) -> None:
    """Write the file atomically (temp, fsync, rename): a crash leaves the old file or the new one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps(seen.to_dict(), indent=2) + "\n")


def _corrupt_name(path: Path) -> Path:
    base = path.with_name(f"{path.name}.corrupt-{utc_timestamp()}")
    candidate, k = base, 1
    while candidate.exists():
        candidate = base.with_name(f"{base.name}.{k}")
        k += 1
    return candidate


def load_seen(
    path: str | os.PathLike[str],
    *,
    rebuild_from: Callable[[], SeenMap | Mapping[str, Any] | None] | None = None,
    repair: bool = True,
    warn: Warn | None = None,
    legacy_split: Split | None = None,
) -> SeenMap:
    """The seen records at ``path`` (a version-1 file's records take ``legacy_split``).

    - missing file → the map ``rebuild_from()`` gives (the latest checkpoint's), else empty;
    - unreadable or invalid file → rebuilt from ``rebuild_from()`` with a warning; with
      ``repair`` the broken file is renamed ``<name>.corrupt-<UTC ts>`` and the rebuilt map
      written in its place (a read-only caller such as ``status`` passes ``repair=False``);
      with nothing to rebuild from it is a :class:`DataError` saying how to fix it.

    ``rebuild_from`` returns the latest checkpoint's cumulative map (a :class:`SeenMap`, the
    ``seen_datasets.json`` object or its bare ``shards`` mapping) or None when there is no checkpoint.
    """
    path = Path(path)
    say = warn or _log.warning
    if not path.exists():
        rebuilt = rebuild_from() if rebuild_from else None
        return _as_seen_map(rebuilt, "the latest checkpoint's seen map") if rebuilt else SeenMap()
    try:
        return read_seen(path, legacy_split)
    except DataError as exc:
        problem = exc.one_line()
    rebuilt = rebuild_from() if rebuild_from else None
    if rebuilt is None:
        raise DataError(
            f"seen records unreadable: {problem}",
            f"restore {path.name} from a backup; delete it only if you accept that every shard "
            "counts as new again (no checkpoint exists to rebuild it from)",
        )
    seen = _as_seen_map(rebuilt, "the latest checkpoint's seen map")
    if not repair:
        say(f"seen records unreadable ({problem}); using the latest checkpoint's map instead")
        return seen
    kept = _corrupt_name(path)
    os.replace(path, kept)
    save_seen(path, seen)
    say(
        f"seen records unreadable ({problem}); rebuilt {path} from the latest checkpoint "
        f"({len(seen)} shards), the broken file is kept as {kept.name}"
    )
    return seen


def seen_differences(file_map: SeenMap, checkpoint_map: SeenMap) -> list[str]:
    """Human-readable differences between the file and the checkpoint (one line each)."""
    lines = []
    for sid in sorted(set(checkpoint_map) - set(file_map)):
        lines.append(
            f"{sid[:12]}: in the checkpoint (step {checkpoint_map[sid].step}), not in the file"
        )
    for sid in sorted(set(file_map) - set(checkpoint_map)):
        lines.append(f"{sid[:12]}: in the file (step {file_map[sid].step}), not in the checkpoint")
    for sid in sorted(set(file_map) & set(checkpoint_map)):
        if file_map[sid] != checkpoint_map[sid]:
            lines.append(f"{sid[:12]}: file and checkpoint records differ")
    return lines


def reconcile(
    file_map: SeenMap,
    checkpoint_map: SeenMap | Mapping[str, Any] | None,
    *,
    warn: Warn | None = None,
) -> SeenMap:
    """The seen map to use: the latest checkpoint's (the file is only a view of it).

    With no checkpoint the file stands. Differences are reported through ``warn`` (one line).
    A checkpoint ahead of the file is normal after a crash between the final checkpoint and
    the file write; a file ahead of the checkpoint means checkpoints were removed.
    """
    if checkpoint_map is None:
        return file_map
    ckpt = _as_seen_map(checkpoint_map, "the latest checkpoint's seen map")
    diffs = seen_differences(file_map, ckpt)
    if diffs:
        more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
        (warn or _log.warning)(
            f"seen_datasets.json differs from the latest checkpoint in {len(diffs)} shard(s): "
            f"{'; '.join(diffs[:3])}{more} — the checkpoint wins"
        )
    return ckpt
