"""Decide what ``allllm tokenize`` must do: which sources are up to date, appended or changed.

Shard metas remember every source they were made from (path, size, sha256 and
the byte range they cover). A source is *up to date* when a live shard made
with the same settings (tokenizer fingerprint, seq_len, document boundary,
BOS/EOS, text field) covers its current bytes. A source that grew by appending
— its old content is an unchanged prefix — needs a shard of only the new
bytes. A source changed any other way is tokenized whole again, and its old
shards are *superseded* (with every other source those shards hold, so no
text is lost).

The work is then cut into shard jobs (one shard each) of at most ``shard_bytes`` of
input, whatever the world size, at the raw reader's units (``raw.work_units``: just
after a document end, at row groups / record batches; a compressed stream and a
``file`` document whole), so the jobs depend only on the sources' bytes — never on
the world size, timing or order of hashing. The limit: one document (row group,
record batch, compressed file) over ``shard_bytes`` is a job of its own, never cut.
Pieces under ``pack_below_bytes`` are packed, in input order, into shards of at most
``shard_bytes``. Of a source redone whole, the job of its first part (byte 0) names
the superseded shards; it must be written before the source's other parts (the jobs'
order), since a later part may have an old shard's id (unchanged text), and supersession
by id reaches every older shard of that id. Existing shards stay up to date whatever
``shard_bytes`` is now (several with adjacent byte ranges cover a source as one does).

A shard is *live* unless a newer shard lists its id in ``supersedes``. "Newer"
matters when text comes back: v1 → v2 → v1 again gives a third shard with the
first one's id, and only the order tells that the second is the one replaced.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from allllm.data.shard_format import (
    META_SUFFIX,
    ShardMeta,
    parse_shard_name,
    read_meta,
    shard_order_key,
)
from allllm.data.tokenize import journal
from allllm.data.tokenize.packing import (
    ShardJob,
    Why,
    WorkItem,
    pack_items,
    source_stem,
    split_item,
)
from allllm.errors import DataError

__all__ = [  # the plan's parts (``packing``) are re-exported: callers import them from here
    "DEFAULT_SHARD_BYTES",
    "PACK_LIMIT_BYTES",
    "ExistingShard",
    "Settings",
    "ShardJob",
    "TokenizePlan",
    "WorkItem",
    "display_path",
    "existing_shards",
    "identity_of_meta_path",
    "live_shards",
    "plan_tokenize",
    "source_stem",
]

if TYPE_CHECKING:
    from allllm.data.raw import RawSource
    from allllm.tokenizer.base import CutRule

DEFAULT_SHARD_BYTES = 256 << 20  # data.shard_bytes: one shard's input at most
PACK_LIMIT_BYTES = DEFAULT_SHARD_BYTES  # the name of the pack limit before shard_bytes


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
        return (
            meta.tokenizer.fingerprint == self.fingerprint
            and meta.seq_len == self.seq_len
            and meta.settings_mismatch(
                add_bos=self.add_bos,
                add_eos=self.add_eos,
                document_boundary=self.document_boundary,
                text_field=self.text_field,
            )
            is None
        )


@dataclass
class TokenizePlan:
    jobs: list[ShardJob]
    up_to_date: list[RawSource]
    superseded: list[str]  # stems of shards the new ones will supersede
    warnings: list[str]
    # the live shards made with these settings: a rebuild with the id of one of them is a
    # shard that already exists (``rebuilt``)
    live: list[ExistingShard] = field(default_factory=list)


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
    from allllm.data.raw.find import path_identity

    return path_identity(path, cwd)


@dataclass(frozen=True)
class ExistingShard:
    """A complete shard in the data dir, with what orders it among the others."""

    stem: str
    meta: ShardMeta
    mtime_ns: int = 0  # of its meta file: orders shards whose ``created`` second is the same

    def order(self) -> tuple[str, int, int, str]:
        return shard_order_key(self.meta.created, self.mtime_ns, self.stem)


def existing_shards(data_dir: Path) -> list[ExistingShard]:
    """Every complete shard in ``data_dir`` (journaled stems and unreadable metas skipped)."""
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
            meta = read_meta(Path(entry.path))
            mtime = entry.stat().st_mtime_ns
        except (DataError, OSError):
            continue  # `allllm status` reports unreadable metas; tokenize just cannot build on them
        found.append(ExistingShard(name.stem, meta, mtime))
    return found


def live_shards(shards: Iterable[ExistingShard]) -> list[ExistingShard]:
    """The shards no newer shard supersedes (oldest first)."""
    ordered = sorted(shards, key=ExistingShard.order)
    replaced: set[str] = set()  # ids superseded by a shard newer than the one looked at
    live = []
    for shard in reversed(ordered):
        if shard.meta.shard_id not in replaced:
            live.append(shard)
        replaced.update(s for s in shard.meta.supersedes if s != shard.meta.shard_id)
    return live[::-1]


@dataclass
class _Entry:
    stem: str
    size: int  # the source's size when this shard was made
    start: int
    end: int
    sha256: str
    inside: tuple[bool, bool] = (False, False)  # meta ``inside_document``


@dataclass
class _History:
    """What live shards made with the same settings know about one source."""

    entries: list[_Entry] = field(default_factory=list)

    def stems(self) -> set[str]:
        return {e.stem for e in self.entries}

    def latest(self) -> tuple[int, str] | None:
        """(size, sha256) of the most recent tokenized state, if its byte ranges are complete:
        its shards cover its bytes from the size of the state it was appended to (covered
        the same way) or from 0. Not after a gap (a deleted shard), nor for parts of a state
        left beside older shards (a run stopped before the job superseding them)."""
        states: dict[tuple[int, str], list[tuple[int, int]]] = {}
        for e in self.entries:
            states.setdefault((e.size, e.sha256), []).append((e.start, e.end))
        if not states:
            return None
        top = state = max(states)
        while True:
            ranges = sorted(states[state])
            lo = covered = ranges[0][0]
            for a, b in ranges:
                if a > covered:
                    return None  # a gap: some shard of this source was deleted
                covered = max(covered, b)
            if covered < state[0]:
                return None
            if lo == 0:
                return top
            prior = [k for k in states if k[0] == lo]  # the state this one was appended to
            if not prior:
                return None
            state = max(prior)

    def gaps(self, size: int, sha: str) -> list[tuple[int, int, bool, bool]]:
        """The byte ranges of the source as it is now (``size``, ``sha``) that no shard
        covers, when every live shard of it holds that very state and one starts at byte 0:
        a run stopped midway (or a shard was deleted), and only those ranges are redone.
        Their ends are cut points of the whole source, so they split as they did; each
        comes with whether it starts / ends inside a document (as its neighbours say)."""
        if not self.entries or {(e.size, e.sha256) for e in self.entries} != {(size, sha)}:
            return []
        ranges = sorted((e.start, e.end) for e in self.entries)
        if ranges[0][0] != 0:
            return []
        open_end = {e.end for e in self.entries if e.inside[1]}  # a document goes on after
        open_start = {e.start for e in self.entries if e.inside[0]}
        out, covered = [], 0
        for a, b in ranges:
            if a > covered:
                out.append((covered, a, covered in open_end, a in open_start))
            covered = max(covered, b)
        if covered < size:
            out.append((covered, size, covered in open_end, False))
        return out


def plan_tokenize(
    sources: Iterable[RawSource],
    existing: Iterable[ExistingShard],
    settings: Settings,
    *,
    identity: Callable[[RawSource], str],
    sha256: Callable[[RawSource, int | None], str],
    pack_below_bytes: int,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    cut_rule: CutRule | None = None,
    force: bool = False,
    cwd: Path | None = None,
) -> TokenizePlan:
    """Compare live sources with existing shards and return the shard jobs to run.

    Every job holds at most ``shard_bytes`` of input, except a job of one document (row
    group, record batch, compressed file) bigger than that which ``cut_rule`` (the
    tokenizer's) cannot cut (the module docstring; ``units.work_units``).

    ``sha256(source, n)`` hashes the first ``n`` bytes of a source; every source
    is hashed over exactly the ``size`` it was listed with, so text appended while
    tokenize runs is left for the next run rather than mixed into this one's record.
    Sources with no earlier shard (and all with ``force``) are not hashed here: their
    ``WorkItem.sha256`` is None, for the caller to compute while it tokenizes them.
    """
    if shard_bytes < 1:
        raise ValueError("shard_bytes must be positive")
    sources = list(sources)
    by_identity = {identity(s): s for s in sources}
    live = live_shards(e for e in existing if settings.matches(e.meta))
    histories: dict[str, _History] = {}
    sources_of_stem: dict[str, list[str]] = {}
    stored_path: dict[str, str] = {}
    meta_of_stem = {e.stem: e.meta for e in live}
    for shard in live:
        ids = []
        for s in shard.meta.sources:
            key = identity_of_meta_path(s.path, cwd)
            ids.append(key)
            stored_path[key] = s.path
            histories.setdefault(key, _History()).entries.append(
                _Entry(shard.stem, s.size, *s.byte_range, s.sha256, tuple(s.inside_document))
            )
        sources_of_stem[shard.stem] = ids

    warnings: list[str] = []
    items: dict[str, WorkItem] = {}
    resumed: dict[str, list[WorkItem]] = {}  # a run stopped midway: only the missing ranges
    up_to_date: list[RawSource] = []
    current: dict[str, str] = {}  # identity -> sha256 of the source now
    full: set[str] = set()  # identities to tokenize whole
    for key, src in by_identity.items():
        hist = histories.get(key)
        if force or hist is None:
            full.add(key)
            continue
        current[key] = sha = sha256(src, src.size)
        latest = hist.latest()
        if latest is not None and latest == (src.size, sha):
            up_to_date.append(src)
            continue
        gaps = [] if src.compressed else hist.gaps(src.size, sha)
        if gaps:
            resumed[key] = [WorkItem(src, *gap[:2], sha, "resumed", *gap[2:]) for gap in gaps]
            continue
        if (
            latest is not None
            and not src.immutable
            and src.size > latest[0]
            and sha256(src, latest[0]) == latest[1]
        ):
            items[key] = WorkItem(src, latest[0], src.size, sha, "appended")
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
        items[key] = WorkItem(src, 0, src.size, current.get(key), why)
    up_to_date = [s for s in up_to_date if identity(s) not in full]

    ordered = [  # input order (sorted by the reader), each item cut at shard_bytes
        part
        for key in by_identity
        for item in ([items[key]] if key in items else resumed.get(key, []))
        for part in split_item(item, settings.document_boundary, shard_bytes, cut_rule)
    ]
    jobs = pack_items(ordered, pack_below_bytes, shard_bytes)
    for job in jobs:  # each new shard names the old shards its sources replace
        replaced = {  # a source redone whole: by the job of its first part (start 0) only
            stem
            for item in job.items
            if item.start == 0
            for stem in histories.get(identity(item.source), _History()).stems()
            if stem in superseded
        }
        job.supersedes = sorted({meta_of_stem[s].shard_id for s in replaced})
    return TokenizePlan(jobs, up_to_date, sorted(superseded), warnings, live)
