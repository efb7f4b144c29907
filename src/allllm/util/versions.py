"""Format versions of the files allllm writes and reads back (the versioning rule).

Every such file carries ``format_version``. Reading one:

- the current version is read as it is;
- an older version is brought up to date by an explicit migration, one
  version at a time (``migrations[n]`` turns version ``n`` into ``n + 1``);
- a newer version is a :class:`~allllm.errors.FormatVersionError`: one line,
  exit 1. It is never taken for corruption, so nothing falls back to an older
  checkpoint, rebuilds a file or starts from scratch because of it;
- a missing or non-integer version means the file is not one of ours (or is
  damaged): the caller's own error for a broken file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from allllm.errors import FormatVersionError

#: ``migration(data, **context)``: most need only the data; some need facts from elsewhere
#: (seen records v1 → v2 take the split values of the latest checkpoint's config snapshot)
Migration = Callable[..., dict[str, Any]]
UPGRADE_HINT = "upgrade allllm (pip install -U allllm) to read it"


@dataclass(frozen=True)
class FileFormat:
    """One kind of file: its name in messages, its current version, its migrations."""

    kind: str  # "trainer state", "seen records", "shard meta", ...
    current: int
    migrations: Mapping[int, Migration] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [v for v in range(1, self.current) if v not in self.migrations]
        if missing:
            raise AssertionError(f"{self.kind}: no migration from format_version {missing}")

    def version_of(self, data: Any) -> int | None:
        """The file's ``format_version``, or None when it has none that is a version."""
        if not isinstance(data, dict):
            return None
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            return None
        return version

    def refuse_newer(self, version: int, where: str) -> None:
        """Raise the one-line error for a file of a newer format than this allllm reads."""
        if version > self.current:
            raise FormatVersionError(
                f"{where}: {self.kind} of format_version {version}, written by a newer allllm "
                f"(this one reads up to {self.current})",
                UPGRADE_HINT,
            )

    def upgrade(self, data: dict[str, Any], where: str, **context: Any) -> dict[str, Any]:
        """``data`` in the current format: migrated when older, refused when newer.

        ``data`` must have a version (check :meth:`version_of` first); it is not modified.
        ``context`` is handed to every migration that runs.
        """
        version = self.version_of(data)
        if version is None:
            raise ValueError(f"{where}: no format_version")
        self.refuse_newer(version, where)
        while version < self.current:
            data = self.migrations[version](dict(data), **context)
            version += 1
            data["format_version"] = version
        return data
