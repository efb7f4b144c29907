"""What a plan is made of — work items and shard jobs — and how items are cut into jobs.

Big items are cut at ``data.shard_bytes``, small ones packed. Apart from ``plan`` (which
decides *what* to tokenize) because this decides only *how it is cut*: a pure function
of the items, so every world size cuts the same jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from allllm.data.raw import RawSource
    from allllm.tokenizer.base import CutRule

Why = Literal["new", "appended", "changed", "forced", "resumed"]


@dataclass
class WorkItem:
    """A byte range of one source to tokenize."""

    source: RawSource
    start: int
    end: int
    # of the source's first ``source.size`` bytes (the whole file as it was listed); None
    # where no decision needed it: the caller hashes those while it tokenizes
    sha256: str | None
    why: Why
    # the range starts / ends inside a document, cut at a safe point of the encoder (the
    # part before it has no EOS, the part after no BOS; ``units.work_units``)
    open_start: bool = False
    open_end: bool = False

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass
class ShardJob:
    """The work items that become one shard."""

    items: list[WorkItem]
    supersedes: list[str] = field(default_factory=list)  # shard ids

    @property
    def nbytes(self) -> int:
        return sum(i.nbytes for i in self.items)

    @property
    def source_stem(self) -> str:
        first = source_stem(self.items[0].source.path)
        return first if len(self.items) == 1 else f"packed-{first}-{len(self.items)}"


def source_stem(path: Path) -> str:
    """``notes.txt`` → ``notes``; ``dump.jsonl.zst`` → ``dump``; never hidden (no leading dot)."""
    from allllm.data.raw.find import SUFFIXES

    name = path.name
    low = name.lower()
    for suffix in SUFFIXES:  # longest first
        if low.endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = name.lstrip(".")  # a hidden shard would be skipped by scans of the journal
    return name or "source"


def split_item(
    item: WorkItem, boundary: str, shard_bytes: int, cut_rule: CutRule | None = None
) -> list[WorkItem]:
    """``item`` as consecutive items of at most ``shard_bytes`` (but for a bigger document
    that ``cut_rule``, the tokenizer's, cannot cut)."""
    if item.nbytes <= shard_bytes:
        return [item]
    from allllm.data.raw import work_units

    units = work_units(
        item.source,
        boundary=boundary,
        target_bytes=shard_bytes,
        start=item.start,
        end=item.end,
        cut_rule=cut_rule,
    )
    return [
        WorkItem(
            item.source,
            u.start,
            u.end,
            item.sha256,
            item.why,
            item.open_start if u.start == item.start else u.open_start,
            item.open_end if u.end == item.end else u.open_end,
        )
        for u in units
    ]


def pack_items(items: list[WorkItem], pack_below_bytes: int, limit: int) -> list[ShardJob]:
    """One shard per large item; small items share shards of up to ``limit`` bytes."""
    jobs: list[ShardJob] = []
    pack: list[WorkItem] = []
    pack_bytes = 0
    for item in items:
        if item.nbytes >= pack_below_bytes:
            jobs.append(ShardJob([item]))
            continue
        if pack and pack_bytes + item.nbytes > limit:
            jobs.append(ShardJob(pack))
            pack, pack_bytes = [], 0
        last = pack[-1] if pack else None
        if last is not None and last.source is item.source and last.end == item.start:
            pack[-1] = WorkItem(
                item.source,
                last.start,
                item.end,
                item.sha256,
                item.why,
                last.open_start,
                item.open_end,
            )
        else:  # (two parts of one source in one pack are one item: one meta `sources` entry)
            pack.append(item)
        pack_bytes += item.nbytes
    if pack:
        jobs.append(ShardJob(pack))
    return jobs
