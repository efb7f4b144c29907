"""The shard registry: what is in ``data.dir`` and what state each shard is in (docs/design.md: shard states).

A scan lists the data dir once (``os.scandir``), groups shard-named files
(``<source>.cached.<L>.<ts>[.k].{jsonl,bin,meta.json}``) by stem, reads only the
meta files and file sizes — never shard data; a ``.bin`` without meta gets its
first 4 bytes read to tell a legacy ``torch.save`` file — and decides each
shard's state for one config (10,000 shards: ~0.5 s, benchmarks/bench_registry.py):

``new``          valid and not in the seen records
``seen``         valid and trained on (the seen record gives the step)
``invalid``      the reason says why: meta unreadable or self-inconsistent, a file listed in
                 meta missing, a size that disagrees with meta (truncated), seq_len or tokenizer
                 mismatch, an id >= vocab, a digest mismatch (checked only with ``verify``)
``unverified``   no meta: skipped unless ``trust_unverified``, which reads and checks every row
                 and computes the shard_id; the shard is then new/seen/invalid like any other
``superseded``   a valid shard's meta ``supersedes`` lists it (never trained unless seen: seen wins)
``duplicate``    another stem holds the same shard_id (the primary is the seen one, else the
                 oldest by meta ``created`` then name)
``missing``      in the seen records, but no files carry its shard_id any more

Stems with a journal entry (``data/.allllm/inflight/<stem>``) are being written
by a tokenize, or were left by a crashed one: they are not shards. Shards that
match ``data.eval_shards`` keep their state but carry ``eval_only`` and are
never trainable; shards ``data.anchor`` names carry ``anchor_only`` (drawn as
anchor replay, never new data; data/anchor.py).

The entry and result types live in ``registry_entries`` and are re-exported here;
the checks of one stem on its own (meta, files, sizes, tokenizer, trust) live in
``registry_inspect``. This module lists the stems, hands each to
``registry_inspect.inspect_stem``, then assigns the states that depend on other
shards and on the seen records.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from allllm.data.anchor_glob import anchor_in_data_dir
from allllm.data.registry_entries import (
    STATES,
    ScanResult,
    ScanSpec,
    ShardEntry,
    ShardState,
    TokenizerIdentity,
    digest_problem,
    verify_reads,
)
from allllm.data.registry_inspect import inspect_stem
from allllm.data.seen import SeenMap, SeenRecord
from allllm.data.shard_format import (
    DATA_SUFFIXES,
    META_SUFFIX,
    journaled_stems,
    parse_shard_name,
    shard_order_key,
)
from allllm.errors import ConfigError
from allllm.util.gc_pause import gc_paused

__all__ = [
    "STATES",
    "ScanResult",
    "ScanSpec",
    "ShardEntry",
    "ShardState",
    "TokenizerIdentity",
    "digest_problem",
    "inspect_one",
    "scan_shards",
    "verify_reads",
]

# -- listing --------------------------------------------------------------------------------------


def _list_stems(
    data_dir: Path, skip: set[str], mtimes: dict[str, int]
) -> dict[str, dict[str, tuple[str, int]]]:
    """stem -> role -> (file name, size), for shard-named regular files outside skipped stems.

    ``mtimes`` receives the mtime of each stem's meta file.
    """
    groups: dict[str, dict[str, tuple[str, int]]] = {}
    with os.scandir(data_dir) as it:
        for de in it:
            name = de.name
            if not (name.endswith((".jsonl", ".bin", META_SUFFIX)) and ".cached." in name):
                continue
            parsed = parse_shard_name(name)
            if parsed is None or parsed.stem in skip:
                continue
            try:
                if not de.is_file():
                    continue
                st = de.stat()
            except OSError:
                continue  # vanished between listing and stat
            groups.setdefault(parsed.stem, {})[parsed.role] = (name, st.st_size)
            if parsed.role == "meta":
                mtimes[parsed.stem] = st.st_mtime_ns
    return groups


def _restat(data_dir: Path, stem: str, mtimes: dict[str, int]) -> dict[str, tuple[str, int]]:
    """The files of one stem, listed again (its meta appeared after the directory listing)."""
    found: dict[str, tuple[str, int]] = {}
    for role, suffix in (*DATA_SUFFIXES.items(), ("meta", META_SUFFIX)):
        path = data_dir / f"{stem}{suffix}"
        try:
            st = path.stat()
        except OSError:
            continue
        found[role] = (path.name, st.st_size)
        if role == "meta":
            mtimes[stem] = st.st_mtime_ns
    return found


# -- states across shards ---------------------------------------------------------------------------


def _matches_record(entry: ShardEntry, record: SeenRecord) -> bool:
    return any(entry.files.get(role) == name for role, name in record.files.items())


def _age(e: ShardEntry) -> tuple[str, int, int, str]:
    return shard_order_key(e.created, e.meta_mtime_ns, e.name)


def _superseded_by(entries: list[ShardEntry]) -> dict[str, str]:
    """stem -> the newer stem whose meta ``supersedes`` lists its shard_id.

    Supersession only reaches older shards: text that returns (v1 → v2 → v1) makes the new v1
    shard live again although an older v1 shard was superseded by v2.
    """
    newest: dict[str, tuple[tuple[str, int, int, str], str]] = {}  # id -> (age, stem) of newest
    for r in entries:
        if r.meta is None or r.state != "new":
            continue
        for sid in r.meta.supersedes:
            if sid != r.shard_id and (sid not in newest or _age(r) > newest[sid][0]):
                newest[sid] = (_age(r), r.name)
    replaced: dict[str, str] = {}
    for e in entries:
        hit = newest.get(e.shard_id or "")
        if hit is not None and hit[0] > _age(e):
            replaced[e.name] = hit[1]
    return replaced


def _assign_seen_and_duplicates(
    entries: list[ShardEntry], seen: SeenMap, replaced: dict[str, str]
) -> None:
    groups: dict[str, list[ShardEntry]] = {}
    for e in entries:
        if e.shard_id:
            e.record = seen.get(e.shard_id)
        if e.state == "new" and e.shard_id:
            groups.setdefault(e.shard_id, []).append(e)
    for sid, group in groups.items():
        record = seen.get(sid)

        def rank(
            e: ShardEntry, record: SeenRecord | None = record
        ) -> tuple[bool, bool, bool, str, str]:
            # the seen one, else a live (not superseded) one, else one with meta, else the
            # oldest by meta `created`, then by name
            seen_one = record is not None and _matches_record(e, record)
            return (not seen_one, e.name in replaced, e.meta is None, e.created or "", e.name)

        group.sort(key=rank)
        primary = group[0]
        if record is not None:
            primary.state = "seen"
        for dup in group[1:]:
            dup.state, dup.duplicate_of = "duplicate", primary.name
            dup.reason = f"same shard_id as {primary.name}"


def _assign_superseded(entries: list[ShardEntry], replaced: dict[str, str]) -> None:
    for e in entries:
        if e.state == "new" and e.name in replaced:
            e.state, e.superseded_by = "superseded", replaced[e.name]
            e.reason = f"replaced by {e.superseded_by} (its source changed)"


def _mark_eval(entries: list[ShardEntry], pattern: str | None) -> None:
    if not pattern:
        return
    for e in entries:
        names = [e.name, *e.files.values()]
        e.eval_only = any(fnmatch.fnmatchcase(n, pattern) for n in names)


def _mark_anchor(entries: list[ShardEntry], data_dir: Path, pattern: str | None) -> None:
    stems = anchor_in_data_dir(data_dir, pattern)
    for e in entries:
        e.anchor_only = e.name in stems
        if e.anchor_only and e.eval_only:
            raise ConfigError(
                f"shard {e.name} matches both data.anchor ({pattern!r}) and data.eval_shards",
                "an eval shard is never trained: make the two globs disjoint",
            )


def _missing_entries(entries: list[ShardEntry], seen: SeenMap) -> list[ShardEntry]:
    present = {e.shard_id for e in entries if e.shard_id}
    by_file = {}
    for e in entries:
        if e.shard_id is None:
            for name in e.files.values():
                by_file[name] = e
    missing = []
    for sid, record in seen.items():
        if sid in present:
            continue
        linked = next((by_file[n] for n in record.files.values() if n in by_file), None)
        if linked is not None:  # e.g. a meta-less shard trained under --trust-unverified
            linked.record = record
            continue
        first = next(iter(record.files.values()), sid)
        parsed = parse_shard_name(first)
        stem = parsed.stem if parsed else first
        missing.append(
            ShardEntry(
                name=stem,
                files=dict(record.files),
                sizes={},
                state="missing",
                reason="in the seen records, but no file carries this shard_id",
                shard_id=sid,
                n_rows=record.rows,
                n_tokens=record.tokens,
                record=record,
            )
        )
    missing.sort(key=lambda e: (e.step or 0, e.name))
    return missing


def scan_shards(
    data_dir: str | os.PathLike[str],
    spec: ScanSpec,
    seen: SeenMap | None = None,
    *,
    verify: bool = False,
    trust_unverified: bool = False,
) -> ScanResult:
    """Every shard in ``data_dir`` with its state for ``spec`` and ``seen`` (see module doc).

    Reads meta files and sizes only, unless ``verify`` (digests of valid shards) or
    ``trust_unverified`` (every row of meta-less shards). A missing data dir is an empty scan.
    """
    data_dir = Path(data_dir)
    seen = seen or SeenMap()
    if not data_dir.is_dir():
        return ScanResult(data_dir, [], _missing_entries([], seen), [], spec)
    with gc_paused():
        # A tokenize journals a stem before its files appear and un-journals it after its meta
        # is in place. Reading the journal before and after the listing, and looking again for
        # the meta of stems listed without one, means a shard being written is never taken for
        # a shard without meta: either it is journaled, or its meta exists by now.
        journaled = journaled_stems(data_dir)
        mtimes: dict[str, int] = {}
        groups = _list_stems(data_dir, journaled, mtimes)
        journaled |= journaled_stems(data_dir)
        for stem in list(groups):
            if stem in journaled:
                del groups[stem]
            elif "meta" not in groups[stem]:
                groups[stem] = _restat(data_dir, stem, mtimes) or groups[stem]
        entries = [
            inspect_stem(
                stem, groups[stem], data_dir, spec, verify=verify, trust_unverified=trust_unverified
            )
            for stem in sorted(groups)
        ]
        for e in entries:
            e.meta_mtime_ns = mtimes.get(e.name, 0)
        replaced = _superseded_by(entries)
        _assign_seen_and_duplicates(entries, seen, replaced)
        _assign_superseded(entries, replaced)
        _mark_eval(entries, spec.eval_glob)
        _mark_anchor(entries, data_dir, spec.anchor_glob)
        missing = _missing_entries(entries, seen)
    return ScanResult(data_dir, entries, missing, sorted(journaled), spec)


def inspect_one(
    data_dir: str | os.PathLike[str], stem: str, spec: ScanSpec, *, verify: bool = True
) -> ShardEntry | None:
    """One stem checked on its own, as a scan checks it before the states that depend on other
    shards: ``new`` means readable, matching ``spec`` and (with ``verify``) its digests hold.

    None when no file of the stem exists. Tokenize asks this of a live shard its rebuild
    reproduced, to tell a good copy from a corrupt one.
    """
    data_dir = Path(data_dir)
    mtimes: dict[str, int] = {}
    found = _restat(data_dir, stem, mtimes)
    if not found:
        return None
    entry = inspect_stem(stem, found, data_dir, spec, verify=verify, trust_unverified=False)
    entry.meta_mtime_ns = mtimes.get(stem, 0)
    return entry
