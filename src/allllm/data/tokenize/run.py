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
from collections.abc import Callable

from allllm.config import Config
from allllm.data.tokenize import journal
from allllm.data.tokenize.feed import SourceHasher
from allllm.data.tokenize.group_progress import RankProgress
from allllm.data.tokenize.jobs import JobRunner, claim_and_run
from allllm.data.tokenize.plan import (
    display_path,
    existing_shards,
    plan_tokenize,
)
from allllm.data.tokenize.setup import ensure_writable_dir, load_setup
from allllm.data.tokenize.shared_plan import (
    SharedPlan,
    forget_dead_plans,
)
from allllm.data.tokenize.summary import (
    NoProgress,
    TokenizeProgress,
    TokenizeSummary,
)
from allllm.data.tokenize.world import World, resolve_world
from allllm.errors import AllllmError


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
        runner = JobRunner(setup, plan, summary, progress, hasher, _warn)
        runner.knobs = {
            "segment_chars": segment_chars,
            "batch_chars": batch_chars,
            "max_document_chars": max_document_chars,
            "chunk_bytes": chunk_bytes,
        }
        try:
            claim_and_run(shared, plan, runner, progress)
        finally:
            runner.close()
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
