"""``allllm tokenize``: raw text → cached shards, streaming, parallel, incremental, atomic.

The flow: load the tokenizer and check its ids fit the model, resolve the raw
sources, take the data dir's tokenize lock, remove what a crashed run left
(journaled files only), plan which sources need work (``plan``), then
for each shard stream the sources' documents through the tokenizer
(``encode``) into a ``ShardWriter`` (``write``) that packs rows and writes
``.jsonl`` / ``.bin`` and the meta last; a finished shard a live shard already
holds is discarded (``rebuilt``). torch is never imported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from allllm.config import Config
from allllm.data.registry import ScanSpec, TokenizerIdentity
from allllm.data.shard_format import TokenizerInfo, bin_dtype_for, unique_stem
from allllm.data.tokenize import journal
from allllm.data.tokenize.encode import EncodeTimings, Pieces, StreamEncoder
from allllm.data.tokenize.feed import job_pieces, source_record
from allllm.data.tokenize.plan import (
    Settings,
    ShardJob,
    WorkItem,
    display_path,
    existing_shards,
    plan_tokenize,
)
from allllm.data.tokenize.rebuilt import RebuildCheck, Verdict, settle
from allllm.data.tokenize.summary import (
    NoProgress,
    ShardSummary,
    TokenizeProgress,
    TokenizeSummary,
)
from allllm.data.tokenize.write import ShardWriter
from allllm.errors import DataError
from allllm.util.clock import utc_timestamp


def _ensure_writable_dir(data_dir: Path) -> None:
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"data.dir {data_dir} is not a directory", "point data.dir at a folder")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create data dir {data_dir}: {exc.strerror}",
            "fix data.dir in the config or the folder's permissions",
        ) from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise DataError(
            f"data dir {data_dir} is not writable", "fix its permissions or choose another data.dir"
        )


@dataclass(frozen=True)
class _Setup:
    """The loaded tokenizer and everything derived from it and the config, for every shard."""

    cfg: Config
    encode_batch: Callable[[list[str]], Any]
    encode_batch_arrays: Callable[[list[str]], Any] | None
    encode_joined: Callable[[list[str]], Any] | None
    bos_id: int | None
    eos_id: int | None
    cut_rule: Any
    settings: Settings
    tok_info: TokenizerInfo
    pad_id: int
    formats: list[str]
    workers: int = 1  # batches the encoder runs at once


def _load(cfg: Config, num_threads: int | None, extra_formats: list[str] | None) -> _Setup:
    """Load the tokenizer and refuse it, before anything is written, if its ids do not fit."""
    from allllm.tokenizer._shared import default_num_threads
    from allllm.tokenizer.base import TokenizerBackend
    from allllm.tokenizer.manager import TokenizerManager

    tok = TokenizerManager.from_config(cfg.tokenizer, num_threads=num_threads)
    tok.check_vocab(cfg.model.vocab_size)
    workers = 1
    if tok.concurrent_batches:  # several one-thread batches at once: no idle core between them
        workers = num_threads or default_num_threads()
        tok.set_num_threads(1)
    bos_id, eos_id = tok.special_ids_for_document()
    # backends that make uint32 arrays themselves (tiktoken, byte) can skip Python int lists
    native = type(tok.backend).encode_batch_arrays is not TokenizerBackend.encode_batch_arrays
    joins = type(tok.backend).encode_joined is not TokenizerBackend.encode_joined
    return _Setup(
        cfg=cfg,
        encode_batch=tok.encode_batch,
        encode_batch_arrays=tok.encode_batch_arrays if native else None,
        # one call per batch, on one thread: only where batches run concurrently anyway
        encode_joined=tok.encode_joined if joins and tok.concurrent_batches else None,
        bos_id=bos_id,
        eos_id=eos_id,
        cut_rule=tok.cut_rule,
        settings=Settings(
            fingerprint=tok.fingerprint,
            seq_len=cfg.data.seq_len,
            document_boundary=cfg.data.document_boundary,
            add_bos=cfg.tokenizer.add_bos,
            add_eos=cfg.tokenizer.add_eos,
            text_field=cfg.data.text_field,
        ),
        tok_info=TokenizerInfo(
            backend=cfg.tokenizer.backend,
            path=cfg.tokenizer.path,
            fingerprint=tok.fingerprint,
            vocab_size=tok.vocab_size,
            bos_id=tok.bos_id,
            eos_id=tok.eos_id,
            pad_id=tok.pad_id,
        ),
        pad_id=next((i for i in (tok.pad_id, tok.eos_id) if i is not None), 0),
        formats=list(dict.fromkeys([*cfg.data.formats, *(extra_formats or [])])),
        workers=workers,
    )


def tokenize(
    cfg: Config,
    *,
    inputs: list[str] | None = None,
    force: bool = False,
    extra_formats: list[str] | None = None,
    progress: TokenizeProgress | None = None,
    warn: Callable[[str], None] | None = None,
    num_threads: int | None = None,
    chunk_bytes: int = 1 << 20,
    segment_chars: int = 16_384,
    batch_chars: int = 2_000_000,
    max_document_chars: int = 16 << 20,
) -> TokenizeSummary:
    """Tokenize the config's raw text (or ``inputs``) into shards in ``data.dir``.

    Sources already tokenized with the same settings are skipped ("up to date");
    appended text gets a shard of only the new bytes; changed sources are redone
    and their old shards superseded. ``force`` redoes everything, and keeps a live shard
    its rebuild reproduces (``summary.unchanged``; ``rebuilt``). The last four
    arguments bound memory and decide the parallel work: the raw reader's piece
    size, the longest text handed to the tokenizer where it may be cut, the text
    per batch call, and the longest document held whole when it has no safe cut.
    """
    from allllm.data.digest_cache import DigestCache
    from allllm.data.raw import resolve_sources, source_identity, source_sha256

    started = time.perf_counter()
    progress = progress or NoProgress()
    summary = TokenizeSummary()

    def _warn(message: str) -> None:
        summary.warnings.append(message)
        if warn:
            warn(message)

    setup = _load(cfg, num_threads, extra_formats)
    summary.timings["load"] = time.perf_counter() - started
    sources = resolve_sources(
        inputs or cfg.data.raw_paths, warn=_warn, label="--input" if inputs else "data.raw_path"
    )
    summary.sources = len(sources)
    data_dir = cfg.data_dir
    _ensure_writable_dir(data_dir)

    with journal.tokenize_lock(data_dir):
        t0 = time.perf_counter()
        for stem, removed in journal.clean_leftovers(data_dir).items():
            summary.cleaned.append(stem)
            _warn(f"removed {len(removed)} file(s) an interrupted tokenize left ({stem})")
        cache = DigestCache.for_data_dir(data_dir)  # whole sources unchanged since: not read
        sha256 = cache.source_digests(source_sha256)
        plan = plan_tokenize(
            sources,
            existing_shards(data_dir),
            setup.settings,
            identity=source_identity,
            sha256=sha256,
            pack_below_bytes=cfg.data.pack_below_bytes,
            force=force,
        )
        for message in plan.warnings:
            _warn(message)
        summary.up_to_date = [display_path(s.path) for s in plan.up_to_date]
        id_of = {e.stem: e.meta.shard_id for e in plan.live}
        rebuilds = RebuildCheck(data_dir, plan.live, _scan_spec(setup))
        summary.timings["plan"] = time.perf_counter() - t0
        progress.begin(sum(j.nbytes for j in plan.jobs), len(plan.jobs))
        hasher = _SourceHasher(sha256, [i for job in plan.jobs for i in job.items])
        knobs = {"segment_chars": segment_chars, "batch_chars": batch_chars}
        knobs["max_document_chars"] = max_document_chars
        skipped = [0]  # empty records passed over, all jobs together
        try:
            for job in plan.jobs:
                current = {"name": display_path(job.items[0].source.path)}
                encoder = StreamEncoder(
                    setup.encode_batch,
                    encode_batch_arrays=setup.encode_batch_arrays,
                    encode_joined=setup.encode_joined,
                    bos_id=setup.bos_id,
                    eos_id=setup.eos_id,
                    cut_rule=setup.cut_rule,
                    warn=_warn,
                    source_name=lambda current=current: current["name"],
                    workers=setup.workers,
                    **knobs,
                )
                feed = job_pieces(job, cfg, chunk_bytes, current, skipped)
                writer_timings: dict[str, float] = {}
                try:
                    shard, verdict = _write_shard(
                        setup, job, encoder, feed, progress, writer_timings, hasher, rebuilds
                    )
                finally:
                    _add_timings(summary.timings, encoder.timings, writer_timings)
                summary.bytes += job.nbytes
                summary.empty_records = skipped[0]
                summary.replaced += verdict.replaced
                if verdict.unchanged is not None:
                    summary.unchanged.append(verdict.unchanged)
                elif shard is not None:
                    summary.shards.append(shard)
                    gone = [st for st in plan.superseded if id_of[st] in shard.supersedes]
                    summary.superseded = sorted({*summary.superseded, *gone})
                else:
                    names = ", ".join(display_path(i.source.path) for i in job.items)
                    _warn(f"{names}: no text to tokenize (only whitespace), no shard written")
        finally:
            hasher.close()
            cache.save()  # digests of the sources' contents: right whether the jobs ended or not
            progress.end()
    summary.seconds = time.perf_counter() - started
    return summary


class _SourceHasher:
    """Hashes the sources the plan did not need to hash, on a thread, while they are tokenized.

    hashlib releases the GIL, so this overlaps the encoding instead of delaying its start.
    """

    def __init__(self, sha256: Callable[[Any, int | None], str], items: list[WorkItem]) -> None:
        todo = [i for i in items if i.sha256 is None]
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="allllm-sha256")
        self._futures = {id(i): self._pool.submit(sha256, i.source, i.source.size) for i in todo}

    def resolve(self, items: list[WorkItem]) -> None:
        """Fill in ``sha256`` of ``items`` (waiting for their hashes where needed)."""
        for item in items:
            if item.sha256 is None:
                item.sha256 = self._futures[id(item)].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _scan_spec(setup: _Setup) -> ScanSpec:
    """What ``status`` checks a shard against for this config (to judge a rebuild's twin)."""
    info = setup.tok_info
    ident = TokenizerIdentity(
        info.backend, info.path, info.fingerprint, info.vocab_size, info.pad_id, info.eos_id
    )
    return ScanSpec.from_config(setup.cfg, ident)


def _add_timings(total: dict[str, float], encoder: EncodeTimings, writer: dict[str, float]) -> None:
    for stage, seconds in [*asdict(encoder).items(), *writer.items()]:
        total[stage] = total.get(stage, 0.0) + seconds


def _write_shard(
    setup: _Setup,
    job: ShardJob,
    encoder: StreamEncoder,
    feed: Iterator[Pieces],
    progress: TokenizeProgress,
    timings: dict[str, float],
    hasher: _SourceHasher,
    rebuilds: RebuildCheck,
) -> tuple[ShardSummary | None, Verdict]:
    """Write one job's shard; None where it has no text. The verdict says whether a live
    shard already held it (the rebuild discarded) or which same-id shards it replaced."""
    cfg, tok_info = setup.cfg, setup.tok_info
    data_dir = cfg.data_dir
    stem = unique_stem(data_dir, job.source_stem, cfg.data.seq_len, utc_timestamp())
    writer = ShardWriter(
        data_dir,
        stem,
        seq_len=cfg.data.seq_len,
        formats=setup.formats,
        dtype=bin_dtype_for(tok_info.vocab_size),
        pad_id=setup.pad_id,
        id_range=tok_info.vocab_size,
        vocab_size=cfg.model.vocab_size,
    )
    progress.begin_shard(stem, job.nbytes)
    sizes = {display_path(i.source.path): i.nbytes for i in job.items}
    # a document's source: its index in meta `sources` (the order of job.items)
    source_index = {display_path(i.source.path): k for k, i in enumerate(job.items)}
    documents = 0
    file_name = None
    try:
        for chunk in encoder.encode(feed):
            names = chunk.doc_sources
            doc_sources = np.fromiter(map(source_index.__getitem__, names), np.uint32, len(names))
            writer.add(chunk.ids, chunk.doc_ends, doc_sources)
            documents += chunk.documents
            tokens = int(chunk.ids.size)
            for name, nbytes in chunk.progress:
                if name != file_name:
                    progress.begin_file(name, sizes.get(name, 0))
                    file_name = name
                progress.advance(nbytes, tokens)
                tokens = 0
        if writer.n_rows == 0 and not writer.has_pending():
            writer.abort()
            return None, Verdict()
        has_jsonl = any(i.source.records for i in job.items)
        hasher.resolve(job.items)
        meta = writer.finish(
            tokenizer=tok_info,
            document_boundary=cfg.data.document_boundary,
            sources=[source_record(i) for i in job.items],
            add_bos=cfg.tokenizer.add_bos,
            add_eos=cfg.tokenizer.add_eos,
            text_field=cfg.data.text_field if has_jsonl else None,
            n_documents=documents,
            supersedes=job.supersedes,
        )
        verdict = settle(writer, meta, rebuilds)
    except BaseException:
        writer.abort()
        raise
    finally:
        timings.update(writer.timings)
        progress.end_shard()
    if verdict.unchanged is not None:
        return None, verdict
    return ShardSummary(
        stem=stem,
        shard_id=meta.shard_id,
        sources=[s.path for s in meta.sources],
        why=[i.why for i in job.items],
        documents=documents,
        tokens=meta.n_tokens,
        rows=meta.n_rows,
        files=[f.name for f in meta.files.values()],
        supersedes=list(meta.supersedes),
    ), verdict
