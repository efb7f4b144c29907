"""Decide what ``allllm tokenize`` must do: which sources are up to date, appended or changed.

Shard metas remember every source they were made from (path, size, sha256 and
the byte range they cover). A source is *up to date* when a shard made with
the same settings (tokenizer fingerprint, seq_len, document boundary, BOS/EOS,
text field) covers its current bytes. A source that grew by appending — its
old content is an unchanged prefix — needs a shard of only the new bytes. A
source changed any other way is tokenized whole again, and its old shards are
*superseded* (with every other source those shards hold, so no text is lost).
Small pieces of work are packed into one shard so they waste no rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from allllm.data import journal
from allllm.data.shards import META_SUFFIX, ShardMeta, parse_shard_name, read_meta
from allllm.errors import DataError

PACK_LIMIT_BYTES = 256 << 20  # one packed shard holds at most this much input

Why = Literal["new", "appended", "changed", "forced"]


@dataclass(frozen=True)
class Settings:
    """Everything besides the raw bytes that decides a shard's ids."""

    fingerprint: str
    seq_len: int
    document_boundary: str
    add_bos: bool
    add_eos: bool
    text_field: str

    def matches(self, meta: ShardMeta) -> bool:
        if (
            meta.tokenizer.fingerprint != self.fingerprint
            or meta.seq_len != self.seq_len
            or meta.add_bos != self.add_bos
            or meta.add_eos != self.add_eos
        ):
            return False
        has_jsonl = any(_source_format(s.path) == "jsonl" for s in meta.sources)
        has_txt = any(_source_format(s.path) == "txt" for s in meta.sources)
        if has_jsonl and meta.text_field not in (None, self.text_field):
            return False
        return not has_txt or meta.document_boundary == self.document_boundary


@dataclass
class WorkItem:
    """A byte range of one source to tokenize."""

    source: object  # allllm.data.raw.RawSource
    start: int
    end: int
    sha256: str  # of the whole source as it is now
    why: Why

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass
class ShardJob:
    """The work items that become one shard."""

    items: list[WorkItem]
    supersedes: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(i.nbytes for i in self.items)

    @property
    def source_stem(self) -> str:
        first = source_stem(self.items[0].source.path)  # type: ignore[attr-defined]
        return first if len(self.items) == 1 else f"packed-{first}-{len(self.items)}"


@dataclass
class TokenizePlan:
    jobs: list[ShardJob]
    up_to_date: list[object]  # RawSource
    superseded: list[str]  # shard stems that will be superseded
    warnings: list[str]


def source_stem(path: Path) -> str:
    """``notes.txt`` → ``notes``; ``dump.jsonl.gz`` → ``dump``."""
    name = path.name
    for suffix in (".gz",):
        name = name.removesuffix(suffix)
    for suffix in (".txt", ".jsonl"):
        name = name.removesuffix(suffix)
    return name or path.name


def _source_format(path: str) -> str:
    return "jsonl" if path.removesuffix(".gz").endswith(".jsonl") else "txt"


def display_path(path: Path, cwd: Path | None = None) -> str:
    """The path as stored in meta: relative to the workspace when inside it, else absolute."""
    resolved = Path(os.path.abspath(path))
    base = Path(os.path.abspath(cwd or Path.cwd()))
    try:
        return str(resolved.relative_to(base))
    except ValueError:
        return str(resolved)


def identity_of_meta_path(path: str, cwd: Path | None = None) -> str:
    """Resolve a meta ``sources[].path`` the way ``source_identity`` resolves a live source."""
    p = Path(path)
    if not p.is_absolute():
        p = (cwd or Path.cwd()) / p
    return str(p.resolve())


def existing_shards(data_dir: Path) -> list[tuple[str, ShardMeta]]:
    """(stem, meta) of every complete shard in ``data_dir`` (journaled stems and bad metas skipped)."""
    if not data_dir.is_dir():
        return []
    journaled = journal.journaled_stems(data_dir)
    found = []
    for entry in sorted(os.scandir(data_dir), key=lambda e: e.name):
        if not entry.name.endswith(META_SUFFIX):
            continue
        name = parse_shard_name(entry.name)
        if name is None or name.stem in journaled:
            continue
        try:
            found.append((name.stem, read_meta(Path(entry.path))))
        except DataError:
            continue  # `allllm status` reports unreadable metas; tokenize just cannot build on them
    return found


@dataclass
class _History:
    """What existing shards (same settings, not superseded) know about one source."""

    entries: list[tuple[str, ShardMeta, int, int, int, str]] = field(default_factory=list)
    # (stem, meta, size_then, range_start, range_end, sha_then)

    def stems(self) -> set[str]:
        return {e[0] for e in self.entries}

    def latest(self) -> tuple[int, str] | None:
        """(size, sha256) of the most recent tokenized state, if its byte ranges are complete."""
        if not self.entries:
            return None
        size, sha = max((e[2], e[5]) for e in self.entries)
        ranges = sorted((e[3], e[4]) for e in self.entries if e[2] <= size)
        covered = 0
        for lo, hi in ranges:
            if lo > covered:
                return None  # a gap: some shard of this source was deleted
            covered = max(covered, hi)
        return (size, sha) if covered >= size else None


def plan_tokenize(
    sources: Iterable[object],
    existing: list[tuple[str, ShardMeta]],
    settings: Settings,
    *,
    identity: Callable[[object], str],
    sha256: Callable[[object, int | None], str],
    pack_below_bytes: int,
    force: bool = False,
    cwd: Path | None = None,
) -> TokenizePlan:
    """Compare live sources with existing shards and return the shard jobs to run."""
    sources = list(sources)
    by_identity = {identity(s): s for s in sources}
    matching = [(stem, m) for stem, m in existing if settings.matches(m)]
    superseded_ids = {sid for _, m in matching for sid in m.supersedes}
    live = [(stem, m) for stem, m in matching if m.shard_id not in superseded_ids]
    histories: dict[str, _History] = {}
    sources_of_stem: dict[str, list[str]] = {}
    stored_path: dict[str, str] = {}
    meta_of_stem = dict(live)
    for stem, meta in live:
        ids = []
        for s in meta.sources:
            key = identity_of_meta_path(s.path, cwd)
            ids.append(key)
            stored_path[key] = s.path
            histories.setdefault(key, _History()).entries.append(
                (stem, meta, s.size, s.byte_range[0], s.byte_range[1], s.sha256)
            )
        sources_of_stem[stem] = ids

    warnings: list[str] = []
    items: dict[str, WorkItem] = {}
    up_to_date: list[object] = []
    full: set[str] = set()  # identities to tokenize whole
    for key, src in by_identity.items():
        size = src.size  # type: ignore[attr-defined]
        hist = histories.get(key)
        latest = hist.latest() if hist else None
        if force:
            full.add(key)
            continue
        if hist is None:
            items[key] = WorkItem(src, 0, size, sha256(src, None), "new")
            continue
        current = sha256(src, None)
        if latest is not None and latest[0] == size and latest[1] == current:
            up_to_date.append(src)
            continue
        compressed = getattr(src, "compressed", False)
        if (
            latest is not None
            and not compressed
            and size > latest[0]
            and sha256(src, latest[0]) == latest[1]
        ):
            items[key] = WorkItem(src, latest[0], size, current, "appended")
            continue
        full.add(key)

    # A full re-tokenization supersedes every shard holding that source; the other sources of
    # those shards must then be tokenized whole as well, or their text would be lost.
    superseded: set[str] = set()
    todo = list(full)
    while todo:
        key = todo.pop()
        for stem in histories.get(key, _History()).stems():
            if stem in superseded:
                continue
            superseded.add(stem)
            for other in sources_of_stem.get(stem, []):
                if other in full:
                    continue
                if other in by_identity:
                    full.add(other)
                    todo.append(other)
                else:
                    warnings.append(
                        f"{stored_path.get(other, other)}: no longer in the raw input; its text "
                        f"leaves with superseded shard {stem}"
                    )
    for key in full:
        src = by_identity[key]
        why: Why = "forced" if force else ("changed" if key in histories else "new")
        items[key] = WorkItem(src, 0, src.size, sha256(src, None), why)  # type: ignore[attr-defined]
        if src in up_to_date:
            up_to_date.remove(src)

    ordered = [items[k] for k in by_identity if k in items]  # input order (sorted by the reader)
    jobs = _pack(ordered, pack_below_bytes)
    for job in jobs:  # each new shard names the old shards its sources replace
        replaced = {
            stem
            for item in job.items
            if item.start == 0
            for stem in histories.get(identity(item.source), _History()).stems()
            if stem in superseded
        }
        job.supersedes = sorted({meta_of_stem[s].shard_id for s in replaced})
    return TokenizePlan(jobs, up_to_date, sorted(superseded), warnings)


def _pack(items: list[WorkItem], pack_below_bytes: int) -> list[ShardJob]:
    """One shard per large item; small items share shards of up to PACK_LIMIT_BYTES."""
    jobs: list[ShardJob] = []
    pack: list[WorkItem] = []
    pack_bytes = 0
    for item in items:
        if item.nbytes >= pack_below_bytes:
            jobs.append(ShardJob([item]))
            continue
        if pack and pack_bytes + item.nbytes > PACK_LIMIT_BYTES:
            jobs.append(ShardJob(pack))
            pack, pack_bytes = [], 0
        pack.append(item)
        pack_bytes += item.nbytes
    if pack:
        jobs.append(ShardJob(pack))
    return jobs
