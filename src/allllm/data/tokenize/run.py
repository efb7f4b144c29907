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
from dataclasses import asdict

import numpy as np

from allllm.config import Config
from allllm.data.registry import ScanSpec, TokenizerIdentity
from allllm.data.shard_format import bin_dtype_for, unique_stem
from allllm.data.tokenize import journal
from allllm.data.tokenize.encode import EncodeTimings, Pieces, StreamEncoder
from allllm.data.tokenize.feed import SourceHasher, job_pieces, source_record
from allllm.data.tokenize.group_progress import RankProgress
from allllm.data.tokenize.plan import (
    ShardJob,
    TokenizePlan,
    display_path,
    existing_shards,
    plan_tokenize,
)
from allllm.data.tokenize.rebuilt import RebuildCheck, Verdict, settle
from allllm.data.tokenize.setup import Setup, ensure_writable_dir, load_setup
from allllm.data.tokenize.shared_plan import (
    POLL_S,
    SharedPlan,
    forget_dead_plans,
    job_dependencies,
)
from allllm.data.tokenize.summary import (
    NoProgress,
    ShardSummary,
    TokenizeProgress,
    TokenizeSummary,
)
from allllm.data.tokenize.world import World, resolve_world
from allllm.data.tokenize.write import ShardWriter, StemTaken
from allllm.errors import AllllmError
from allllm.util.clock import utc_timestamp


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
    world: World | None = None,
) -> TokenizeSummary:
    """Tokenize the config's raw text (or ``inputs``) into shards in ``data.dir``.

    Sources already tokenized with the same settings are skipped ("up to date");
    appended text gets a shard of only the new bytes; changed sources are redone
    and their old shards superseded. ``force`` redoes everything, and keeps a live shard
    its rebuild reproduces (``summary.unchanged``; ``rebuilt``). The next four
    arguments bound memory and decide the parallel work: the raw reader's piece
    size, the longest text handed to the tokenizer where it may be cut, the text
    per batch call, and the longest document held whole when it has no safe cut.
    ``world`` makes this process one rank of a tokenize job (``world.resolve_world``;
    a lone process by default): the ranks share one plan and claim its shard jobs.
    """
    from allllm.data.digest_cache import DigestCache
    from allllm.data.raw import resolve_sources, source_identity, source_sha256

    started = time.perf_counter()
    progress = progress or NoProgress()
    summary = TokenizeSummary()
    world = world or resolve_world(env={})

    def _warn(message: str) -> None:
        summary.warnings.append(message)
        if warn:
            warn(message)

    if num_threads is None and world.local_size > 1:  # processes x threads <= cores
        num_threads = max(1, (os.cpu_count() or 1) // world.local_size)
    setup = load_setup(cfg, num_threads, extra_formats)
    summary.timings["load"] = time.perf_counter() - started
    sources = resolve_sources(  # every rank: a bad path fails before anything is created
        inputs or cfg.data.raw_paths,
        warn=_warn if world.rank == 0 else lambda _m: None,
        label="--input" if inputs else "data.raw_path",
    )
    summary.sources = len(sources)
    data_dir = cfg.data_dir
    ensure_writable_dir(data_dir)
    os.environ["ALLLLM_RANK"] = str(world.rank)  # fault points of one rank (tests)

    with journal.tokenize_lock(data_dir, world) as hold:
        t0 = time.perf_counter()
        shared = SharedPlan(hold)
        cache = DigestCache.for_data_dir(data_dir)  # whole sources unchanged since: not read
        sha256 = cache.source_digests(source_sha256)
        plan = None if hold.owner else shared.wait()
        if plan is None:
            plan = shared.published()  # the owner of a job whose plan is out already
        if plan is None:
            try:
                for stem, removed in journal.clean_leftovers(data_dir).items():
                    summary.cleaned.append(stem)
                    _warn(f"removed {len(removed)} file(s) an interrupted tokenize left ({stem})")
                forget_dead_plans(data_dir, hold)
                plan = plan_tokenize(
                    sources,
                    existing_shards(data_dir),
                    setup.settings,
                    identity=source_identity,
                    sha256=sha256,
                    pack_below_bytes=cfg.data.pack_below_bytes,
                    shard_bytes=cfg.data.shard_bytes,
                    cut_rule=setup.cut_rule,
                    force=force,
                )
                shared.publish(plan)
            except AllllmError as exc:
                shared.publish_error(exc)
                raise
            for message in plan.warnings:
                _warn(message)
        summary.up_to_date = [display_path(s.path) for s in plan.up_to_date]
        summary.timings["plan"] = time.perf_counter() - t0
        several = world.world_size > 1
        progress = RankProgress(
            progress,
            shared,
            publish=several,
            gather=several and world.simultaneous and world.rank == 0,
        )
        progress.begin(sum(j.nbytes for j in plan.jobs), len(plan.jobs))
        hasher = SourceHasher(sha256)
        runner = _JobRunner(setup, plan, summary, progress, hasher, _warn)
        runner.knobs = {
            "segment_chars": segment_chars,
            "batch_chars": batch_chars,
            "max_document_chars": max_document_chars,
            "chunk_bytes": chunk_bytes,
        }
        try:
            _claim_and_run(shared, plan, runner, progress)
        finally:
            hasher.close()
            cache.save()  # digests of the sources' contents: right whether the jobs ended or not
            progress.end()
        summary.seconds = time.perf_counter() - started
        shared.write_summary(summary)
        if world.world_size > 1 and world.simultaneous and world.rank == 0:
            summary = shared.merged_summary(summary, world.world_size)
            shared.remove()
        elif world.is_single:
            shared.remove()
    return summary


def _claim_and_run(
    shared: SharedPlan, plan: TokenizePlan, runner: _JobRunner, progress: RankProgress
) -> None:
    """Run every job this rank can claim, then wait for (or take over) the others' until all
    are done: a rank whose process died is replaced by whoever notices."""
    jobs = plan.jobs
    deps = job_dependencies(plan)
    counted: set[int] = set()  # jobs whose bytes the progress shows
    remaining = list(range(len(jobs)))
    while remaining:
        for k in remaining:
            if all(shared.is_done(i) for i in deps.get(k, ())) and shared.take(k):
                runner.run(jobs[k])
                shared.finish(k)
                counted.add(k)
        remaining = [k for k in remaining if not shared.is_done(k)]  # done stays done
        for k in set(range(len(jobs))) - set(remaining) - counted:  # done by other ranks
            progress.done_elsewhere(jobs[k].nbytes)
            counted.add(k)
        if remaining:
            progress.poll()
            time.sleep(POLL_S)


class _JobRunner:
    """Runs one shard job of the plan into a shard and records it in the summary."""

    def __init__(
        self,
        setup: Setup,
        plan: TokenizePlan,
        summary: TokenizeSummary,
        progress: TokenizeProgress,
        hasher: SourceHasher,
        warn: Callable[[str], None],
    ) -> None:
        self.setup, self.plan, self.summary = setup, plan, summary
        self.progress, self.hasher, self.warn = progress, hasher, warn
        self.id_of = {e.stem: e.meta.shard_id for e in plan.live}
        self.rebuilds = RebuildCheck(setup.cfg.data_dir, plan.live, _scan_spec(setup))
        self.skipped = [0]  # empty records passed over, all jobs together
        self.knobs: dict[str, int] = {}

    def run(self, job: ShardJob) -> None:
        setup, summary, knobs = self.setup, self.summary, dict(self.knobs)
        chunk_bytes = knobs.pop("chunk_bytes")
        self.hasher.submit(job.items)
        current = {"name": display_path(job.items[0].source.path)}
        encoder = StreamEncoder(
            setup.encode_batch,
            encode_batch_arrays=setup.encode_batch_arrays,
            encode_joined=setup.encode_joined,
            bos_id=setup.bos_id,
            eos_id=setup.eos_id,
            cut_rule=setup.cut_rule,
            warn=self.warn,
            source_name=lambda current=current: current["name"],
            workers=setup.workers,
            **knobs,
        )
        feed = job_pieces(job, setup.cfg, chunk_bytes, current, self.skipped)
        writer_timings: dict[str, float] = {}
        try:
            shard, verdict = _write_shard(
                setup, job, encoder, feed, self.progress, writer_timings, self.hasher, self.rebuilds
            )
        finally:
            _add_timings(summary.timings, encoder.timings, writer_timings)
        summary.bytes += job.nbytes
        summary.empty_records = self.skipped[0]
        summary.replaced += verdict.replaced
        if verdict.unchanged is not None:
            summary.unchanged.append(verdict.unchanged)
        elif shard is not None:
            summary.shards.append(shard)
            gone = [st for st in self.plan.superseded if self.id_of[st] in shard.supersedes]
            summary.superseded = sorted({*summary.superseded, *gone})
        else:
            names = ", ".join(display_path(i.source.path) for i in job.items)
            self.warn(f"{names}: no text to tokenize (only whitespace), no shard written")


def _scan_spec(setup: Setup) -> ScanSpec:
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
    setup: Setup,
    job: ShardJob,
    encoder: StreamEncoder,
    feed: Iterator[Pieces],
    progress: TokenizeProgress,
    timings: dict[str, float],
    hasher: SourceHasher,
    rebuilds: RebuildCheck,
) -> tuple[ShardSummary | None, Verdict]:
    """Write one job's shard; None where it has no text. The verdict says whether a live
    shard already held it (the rebuild discarded) or which same-id shards it replaced."""
    cfg, tok_info = setup.cfg, setup.tok_info
    data_dir = cfg.data_dir
    while True:  # a name no file and no other rank's journal entry uses
        stem = unique_stem(data_dir, job.source_stem, cfg.data.seq_len, utc_timestamp())
        try:
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
            break
        except StemTaken:
            continue
    progress.begin_shard(stem, job.nbytes)
    sizes = {display_path(i.source.path): i.nbytes for i in job.items}
    # a document's source: its index in meta `sources` (the order of job.items)
    source_index = {display_path(i.source.path): k for k, i in enumerate(job.items)}
    documents = 0
    file_name = None
    writer.cut_documents(
        [k for k, i in enumerate(job.items) if i.open_start],
        [k for k, i in enumerate(job.items) if i.open_end],
    )
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
