"""The shard registry: what is in ``data.dir`` and what state each shard is in (DESIGN.md §4).

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
never trainable.

The entry and result types live in ``registry_entries`` and are re-exported here.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path

from allllm.data import legacy
from allllm.data.registry_entries import (
    STATES,
    ScanResult,
    ScanSpec,
    ShardEntry,
    ShardState,
    TokenizerIdentity,
    digest_problem,
)
from allllm.data.seen import SHARD_ID_RE, SeenMap, SeenRecord
from allllm.data.shard_format import (
    DATA_SUFFIXES,
    FORMAT_VERSION,
    META_SUFFIX,
    ShardMeta,
    parse_shard_name,
    read_meta,
    shard_order_key,
)
from allllm.data.tokenize.journal import journaled_stems
from allllm.errors import DataError
from allllm.util.gc_pause import gc_paused

__all__ = [
    "STATES",
    "ScanResult",
    "ScanSpec",
    "ShardEntry",
    "ShardState",
    "TokenizerIdentity",
    "digest_problem",
    "scan_shards",
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


# -- checks on one shard ----------------------------------------------------------------------------


def _meta_problem(meta: ShardMeta) -> str | None:
    """Contradictions within meta beyond ShardMeta.check_consistent."""
    problem = meta.check_consistent()
    if problem:
        return problem
    if not SHARD_ID_RE.match(meta.shard_id):
        return "shard_id is not 64 lowercase hex digits"
    if meta.n_rows and meta.max_id < 0:
        return "max_id is -1 but the shard has rows"
    if meta.dtype == "uint16" and meta.max_id >= 2**16:
        return f"max_id {meta.max_id} does not fit dtype uint16"
    if meta.max_id >= meta.tokenizer.vocab_size:
        return f"max_id {meta.max_id} >= the tokenizer's vocab_size {meta.tokenizer.vocab_size}"
    if "bin" in meta.files and meta.files["bin"].size != meta.expected_bin_size():
        return (
            f"files.bin.size {meta.files['bin'].size} != n_rows*seq_len*itemsize "
            f"{meta.expected_bin_size()}"
        )
    return None


def _same_path(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a == b
    return a == b or os.path.normpath(a) == os.path.normpath(b)


def _tokenizer_problem(meta: ShardMeta, tok: TokenizerIdentity) -> str | None:
    shard = meta.tokenizer
    shard_label = f"{shard.backend}:{shard.path}" if shard.path else shard.backend
    if tok.fingerprint is not None:
        if shard.fingerprint != tok.fingerprint:
            return (
                f"tokenizer mismatch: made with {shard_label} (fingerprint {shard.fingerprint[:12]}), "
                f"the config's tokenizer is {tok.label()} (fingerprint {tok.fingerprint[:12]})"
            )
        return None
    if shard.backend != tok.backend or not _same_path(shard.path, tok.path):
        return f"tokenizer mismatch: made with {shard_label}, the config names {tok.label()}"
    return None


def _best_effort_id(meta_path: Path) -> str | None:
    """The shard_id of a meta that failed validation, if it still names one (for display)."""
    try:
        data = json.loads(meta_path.read_bytes())
    except (OSError, ValueError):
        return None
    sid = data.get("shard_id") if isinstance(data, dict) else None
    return sid if isinstance(sid, str) and SHARD_ID_RE.match(sid) else None


def _read_meta_fast(path: str) -> ShardMeta | None:
    """The hot path of a scan: bytes, json, one pydantic validation. None if anything is off
    (or the meta is of another format_version: :func:`read_meta` migrates or refuses it)."""
    try:
        with open(path, "rb") as fh:
            meta = ShardMeta.model_validate(json.loads(fh.read()))
    except (OSError, ValueError):  # JSONDecodeError and ValidationError are ValueErrors
        return None
    return meta if meta.format_version == FORMAT_VERSION else None


def _inspect_meta_shard(
    entry: ShardEntry, data_dir: Path, found: dict[str, tuple[str, int]], spec: ScanSpec
) -> None:
    meta_path = data_dir / found["meta"][0]
    try:
        # the slow path only to word the error of a broken meta
        meta = _read_meta_fast(str(meta_path)) or read_meta(meta_path)
    except DataError as exc:
        entry.state = "invalid"
        entry.reason = "meta unreadable: " + exc.one_line().removeprefix(f"{meta_path}: ")
        entry.shard_id = _best_effort_id(meta_path)
        return
    entry.meta, entry.shard_id = meta, meta.shard_id
    entry.n_rows, entry.n_tokens, entry.last_row_len = meta.n_rows, meta.n_tokens, meta.last_row_len
    entry.seq_len, entry.dtype, entry.created = meta.seq_len, meta.dtype, meta.created
    tok = meta.tokenizer
    entry.pad_id = tok.pad_id if tok.pad_id is not None else (tok.eos_id or 0)
    # only the files meta lists belong to the shard; others of the stem are reported, not read
    for role in DATA_SUFFIXES:
        if role in found and role not in meta.files:
            entry.unlisted.append(found[role][0])
            entry.files.pop(role)
            entry.sizes.pop(role)
    problem = _meta_problem(meta)
    if problem:
        entry.state, entry.reason = "invalid", f"meta self-inconsistent: {problem}"
        return
    for role, info in meta.files.items():
        if role not in found:
            entry.state = "invalid"
            entry.reason = f"file listed in meta missing: {entry.name}{DATA_SUFFIXES[role]}"
            return
        size = found[role][1]
        if size != info.size:
            what = "truncated" if size < info.size else "size mismatch"
            entry.state = "invalid"
            entry.reason = f"{what}: {found[role][0]} is {size} bytes, meta says {info.size}"
            return
    if meta.seq_len != spec.seq_len:
        entry.state = "invalid"
        entry.reason = f"seq_len mismatch: shard has {meta.seq_len}, the config {spec.seq_len}"
        return
    problem = _tokenizer_problem(meta, spec.tokenizer)
    if problem:
        entry.state, entry.reason = "invalid", problem
        return
    problem = meta.settings_mismatch(**spec.settings) if spec.settings else None
    if problem:
        entry.state, entry.reason = "invalid", problem
        return
    entry.tokenizer_unverified = not spec.tokenizer.verified
    if meta.max_id >= spec.vocab_limit:
        entry.state = "invalid"
        entry.reason = f"id {meta.max_id} >= vocab {spec.vocab_limit}"


def _inspect(
    stem: str,
    found: dict[str, tuple[str, int]],
    data_dir: Path,
    spec: ScanSpec,
    *,
    verify: bool,
    trust_unverified: bool,
) -> ShardEntry:
    entry = ShardEntry(
        name=stem,
        files={role: name for role, (name, _) in found.items()},
        sizes={role: size for role, (_, size) in found.items()},
    )
    if "meta" in found:
        _inspect_meta_shard(entry, data_dir, found, spec)
        if verify and entry.state == "new":
            problem = digest_problem(entry, data_dir)
            if problem:
                entry.state, entry.reason = "invalid", problem
        return entry
    entry.state = "unverified"
    entry.legacy = "bin" in found and legacy.is_torch_save(data_dir / found["bin"][0])
    kind = "legacy torch.save tensor without meta" if entry.legacy else "no meta file"
    entry.reason = f"{kind}; skipped unless --trust-unverified"
    if trust_unverified:
        _trust(entry, data_dir, spec)
    return entry


def _trust(entry: ShardEntry, data_dir: Path, spec: ScanSpec) -> None:
    """Read every row of a meta-less shard; it becomes new (then seen/...) or invalid."""
    parsed = parse_shard_name(next(iter(entry.files.values())))
    if parsed is not None and parsed.seq_len != spec.seq_len:
        entry.state = "invalid"
        entry.reason = (
            f"seq_len mismatch: the name says {parsed.seq_len}, the config {spec.seq_len}"
        )
        return
    paths = {role: data_dir / name for role, name in entry.files.items()}
    try:
        content = legacy.check_unverified(
            jsonl=paths.get("jsonl"),
            bin_path=paths.get("bin"),
            is_legacy=entry.legacy,
            seq_len=spec.seq_len,
            vocab_limit=spec.vocab_limit,
            id_range=spec.tokenizer.vocab_size or spec.vocab_limit,
        )
    except DataError as exc:
        entry.state, entry.reason = "invalid", exc.one_line()
        return
    entry.state, entry.reason = "new", None
    entry.shard_id, entry.n_rows = content.shard_id, content.n_rows
    entry.n_tokens, entry.last_row_len = content.n_tokens, content.last_row_len
    entry.seq_len, entry.dtype, entry.pad_id = spec.seq_len, content.dtype, spec.pad_id


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
        return ScanResult(data_dir, [], _missing_entries([], seen), [])
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
            _inspect(
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
        missing = _missing_entries(entries, seen)
    return ScanResult(data_dir, entries, missing, sorted(journaled))
