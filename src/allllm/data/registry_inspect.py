"""One stem of ``data.dir`` checked on its own against a config: the per-shard half of a registry scan.

``registry.scan_shards`` lists the stems and then hands each here: a stem with
meta has its meta read and checked (self-consistency, files and sizes, seq_len,
tokenizer, tokenize settings, vocab; digests only with ``verify``); a stem
without meta is ``unverified``, or read row by row under ``trust_unverified``.
The states that depend on other shards (seen, duplicate, superseded, missing,
eval) are assigned afterwards by ``registry``. Kept apart so the scan reads as
listing → inspecting → assigning states.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from allllm.data import legacy
from allllm.data.documents import DOC_DTYPE, HEADER_SIZE
from allllm.data.registry_entries import ScanSpec, ShardEntry, TokenizerIdentity, digest_problem
from allllm.data.seen import SHARD_ID_RE
from allllm.data.shard_format import (
    DATA_SUFFIXES,
    DOCS_SUFFIX,
    FORMAT_VERSION,
    ShardMeta,
    parse_shard_name,
    read_meta,
)
from allllm.errors import DataError

__all__ = ["inspect_stem"]


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


def _documents_problem(meta: ShardMeta, stem: str) -> str | None:
    """Meta ``documents`` contradicting the shard: another file name, or another count."""
    docs = meta.documents
    if docs is None:
        return None
    if docs.name != f"{stem}{DOCS_SUFFIX}":
        return f"documents.name {docs.name!r} is not {stem}{DOCS_SUFFIX}"
    if docs.size != HEADER_SIZE + docs.count * DOC_DTYPE.itemsize:
        return f"documents.size {docs.size} does not hold documents.count {docs.count} records"
    if docs.count != meta.n_documents:
        return f"documents.count {docs.count} != n_documents {meta.n_documents}"
    return None


def _sidecar_problem(meta: ShardMeta, stem: str, data_dir: Path) -> str | None:
    """The ``.docs`` meta names is missing or of another size (one stat, as for data files)."""
    docs = meta.documents
    if docs is None:
        return None
    try:
        size = (data_dir / f"{stem}{DOCS_SUFFIX}").stat().st_size
    except FileNotFoundError:
        return f"file listed in meta missing: {stem}{DOCS_SUFFIX}"
    except OSError as exc:
        return f"cannot read {stem}{DOCS_SUFFIX}: {exc.strerror or exc}"
    if size != docs.size:
        what = "truncated" if size < docs.size else "size mismatch"
        return f"{what}: {stem}{DOCS_SUFFIX} is {size} bytes, meta says {docs.size}"
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
    problem = _meta_problem(meta) or _documents_problem(meta, entry.name)
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
    problem = _sidecar_problem(meta, entry.name, data_dir)
    if problem:
        entry.state, entry.reason = "invalid", problem
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


def inspect_stem(
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
