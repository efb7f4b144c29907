"""What ``allllm tokenize`` reports: progress callbacks while it works, a summary after.

Kept apart from the pipeline so the CLI's views and the demo can type against
them without loading the pipeline itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from allllm.data.tokenize.write import WRITE_STAGES

#: stages of ``TokenizeSummary.timings`` in pipeline order, in seconds: load and plan are wall
#: time before encoding starts; encode (wall) and convert run on the encoder thread, overlapping
#: the main thread's read, cut, render, hash and write (CPU time); wait is the main thread idle;
#: finish is fsync, renames and meta (wall)
TIMING_STAGES = ("load", "plan", "read", "cut", "encode", "convert", "wait", *WRITE_STAGES)


class TokenizeProgress(Protocol):
    """What the pipeline reports while it works (the CLI draws progress bars from it).

    Bytes are input bytes on disk; ``advance`` counts toward the file named by the
    latest ``begin_file`` (a shard may hold several files) and toward the total;
    ``advance_others`` (rank 0 of a process group) counts the other ranks' work toward
    the total only. A progress without it gets those bytes through ``advance``.
    """

    def begin(self, total_bytes: int, n_shards: int) -> None: ...
    def begin_shard(self, name: str, nbytes: int) -> None: ...
    def begin_file(self, name: str, nbytes: int) -> None: ...
    def advance(self, nbytes: int, ntokens: int) -> None: ...
    def advance_others(self, nbytes: int, ntokens: int) -> None: ...
    def end_shard(self) -> None: ...
    def end(self) -> None: ...


class NoProgress:
    """A TokenizeProgress that shows nothing (``--quiet``, library calls); subclass it to
    hook into the pipeline's progress."""

    def begin(self, total_bytes: int, n_shards: int) -> None:
        pass

    def begin_shard(self, name: str, nbytes: int) -> None:
        pass

    def begin_file(self, name: str, nbytes: int) -> None:
        pass

    def advance(self, nbytes: int, ntokens: int) -> None:
        pass

    def advance_others(self, nbytes: int, ntokens: int) -> None:
        pass

    def end_shard(self) -> None:
        pass

    def end(self) -> None:
        pass


@dataclass
class ShardSummary:
    """One shard this run wrote."""

    stem: str
    shard_id: str
    sources: list[str]
    why: list[str]  # per source: new | appended | changed | forced
    documents: int
    tokens: int
    rows: int
    files: list[str]
    supersedes: list[str] = field(default_factory=list)  # shard ids it replaces


@dataclass
class TokenizeSummary:
    """What one ``allllm tokenize`` did (``--json`` prints ``to_dict()``)."""

    sources: int = 0
    up_to_date: list[str] = field(default_factory=list)  # source paths
    shards: list[ShardSummary] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)  # stems a shard written now supersedes
    # stems of live shards a rebuild reproduced (same shard_id and sources, digests good, every
    # format): kept, the rebuild discarded (``--force`` on unchanged text)
    unchanged: list[str] = field(default_factory=list)
    # stems of live shards with a rebuild's shard_id and sources whose files failed their
    # checks (corrupt, truncated) or lacked a format this run writes: removed for the rebuild
    replaced: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)  # stems a crashed run left, removed
    warnings: list[str] = field(default_factory=list)
    bytes: int = 0  # raw input bytes read
    empty_records: int = 0  # JSON / Parquet / Arrow records skipped: empty or whitespace text
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMING_STAGES, 0.0))

    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.shards)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def mb_per_s(self) -> float | None:
        return self.bytes / 1e6 / self.seconds if self.seconds and self.bytes else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            documents=self.documents, tokens=self.tokens, rows=self.rows, mb_per_s=self.mb_per_s
        )
        return data
