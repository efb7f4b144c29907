"""Running a tokenize plan's shard jobs on this rank: claim, encode, write, one shard each.

Jobs are claimed one at a time (``SharedPlan.take``), in plan order, so ranks balance
without predicting bytes. Within a rank the encoder threads never idle between jobs:
once a job's input is all submitted, the next job is claimed and its first batches
queued behind this one's tail (``JobRunner.prefetch``) while this shard is finished.
Its shard is still begun only after this one is in place, so commit order — which
``shared_plan.job_dependencies`` relies on — is that of one job after another.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from allllm.data.registry import ScanSpec, TokenizerIdentity
from allllm.data.shard_format import bin_dtype_for, unique_stem
from allllm.data.tokenize.encode import StreamEncoder
from allllm.data.tokenize.feed import SourceHasher, job_pieces, source_record
from allllm.data.tokenize.group_progress import RankProgress
from allllm.data.tokenize.pieces import EncodedChunk, EncodeTimings, Pieces
from allllm.data.tokenize.plan import ShardJob, TokenizePlan, display_path
from allllm.data.tokenize.rebuilt import RebuildCheck, Verdict, settle
from allllm.data.tokenize.setup import Setup
from allllm.data.tokenize.shared_plan import POLL_S, SharedPlan, job_dependencies
from allllm.data.tokenize.summary import ShardSummary, TokenizeProgress, TokenizeSummary
from allllm.data.tokenize.write import ShardWriter, StemTaken
from allllm.util.clock import utc_timestamp

__all__ = ["MIN_JOB_BATCH_CHARS", "JobRunner", "claim_and_run", "job_batch_chars"]


def _claim(
    queue: deque[int], running: int | None, deps: dict[int, set[int]], shared: SharedPlan
) -> int | None:
    """The next job of this pass that this rank may run, claimed. A job that waits only
    for the running one may be claimed and started ahead: its shard is still begun
    after the running one's is in place."""
    while queue:
        k = queue.popleft()
        if all(i == running or shared.is_done(i) for i in deps.get(k, ())) and shared.take(k):
            return k
    return None


def claim_and_run(
    shared: SharedPlan, plan: TokenizePlan, runner: JobRunner, progress: RankProgress
) -> None:
    """Run every job this rank can claim, then wait for (or take over) the others' until all
    are done: a rank whose process died is replaced by whoever notices."""
    jobs = plan.jobs
    deps = job_dependencies(plan)
    counted: set[int] = set()  # jobs whose bytes the progress shows
    remaining = list(range(len(jobs)))
    while remaining:
        queue = deque(remaining)
        k = _claim(queue, None, deps, shared)
        while k is not None:
            ahead: list[int | None] = []

            def look_ahead(k: int = k, ahead: list[int | None] = ahead) -> None:
                ahead.append(nxt := _claim(queue, k, deps, shared))  # noqa: B023 (run now)
                if nxt is not None:
                    runner.prefetch(jobs[nxt])

            runner.run(jobs[k], on_fed=look_ahead)
            shared.finish(k)
            counted.add(k)
            k = ahead[0] if ahead else _claim(queue, None, deps, shared)
        remaining = [k for k in remaining if not shared.is_done(k)]  # done stays done
        for k in set(range(len(jobs))) - set(remaining) - counted:  # done by other ranks
            progress.done_elsewhere(jobs[k].nbytes)
            counted.add(k)
        if remaining:
            progress.poll()
            time.sleep(POLL_S)


#: the smallest batch :func:`job_batch_chars` cuts: below it the per-call overhead shows
MIN_JOB_BATCH_CHARS = 1 << 16


def job_batch_chars(batch_chars: int, job_bytes: int, workers: int) -> int:
    """The text per batch call for one shard job encoded by ``workers`` concurrent batches.

    Jobs run one after the other, so a job of few batches leaves encoder threads idle:
    a 2 MB file in ``file`` mode was one 2M-character batch, one busy core out of two.
    A job gets at least ``4 × workers`` batches (never below ``MIN_JOB_BATCH_CHARS``),
    so the drain at its end idles a thread for a small part of it. The ids do not
    change: batches only group the segments.
    """
    if workers <= 1:
        return batch_chars
    floor = min(MIN_JOB_BATCH_CHARS, batch_chars)
    return max(min(batch_chars, -(-job_bytes // (4 * workers))), floor)


@dataclass
class _Prepared:
    """A job's encoder and input, made ready (and perhaps started ahead)."""

    job: ShardJob
    encoder: StreamEncoder
    feed: Iterator[Pieces]
    skipped: list[int]  # empty records this job's input passed over

    @property
    def started(self) -> bool:
        return self.encoder.started


class JobRunner:
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
        # encoder threads for every job of the run, so the next job's first batches queue
        # behind this one's last (``prefetch``): no thread idles between shards
        self.pool = ThreadPoolExecutor(setup.workers, thread_name_prefix="allllm-encode")
        self._ahead: _Prepared | None = None

    def _prepare(self, job: ShardJob) -> _Prepared:
        setup, knobs = self.setup, dict(self.knobs)
        chunk_bytes = knobs.pop("chunk_bytes")
        batch_chars = job_batch_chars(knobs["batch_chars"], job.nbytes, setup.workers)
        if batch_chars < knobs["batch_chars"]:  # a read piece never holds several batches
            chunk_bytes = min(chunk_bytes, max(batch_chars // 2, MIN_JOB_BATCH_CHARS // 2))
        knobs["batch_chars"] = batch_chars
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
        skipped = [0]
        feed = job_pieces(job, setup.cfg, chunk_bytes, current, skipped)
        return _Prepared(job, encoder, feed, skipped)

    def prefetch(self, job: ShardJob) -> None:
        """Start ``job``'s first batches now, behind the running job's tail (``on_fed``).
        A failure here is left for the job's own run to meet and report."""
        ahead = self._prepare(job)
        try:
            ahead.encoder.start(ahead.feed, self.pool)
        except Exception:
            ahead.encoder.cancel()
            return
        self._ahead = ahead

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.encoder.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def run(self, job: ShardJob, on_fed: Callable[[], None] | None = None) -> None:
        """Write ``job``'s shard (from its prefetched start, if :meth:`prefetch` began it);
        ``on_fed``: called once its input is all submitted (see ``StreamEncoder.encode``)."""
        setup, summary = self.setup, self.summary
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead.job is not job:
            if ahead is not None:
                ahead.encoder.cancel()
            ahead = self._prepare(job)
        encoder, feed = ahead.encoder, ahead.feed
        writer_timings: dict[str, float] = {}
        chunks = encoder.encode(None if ahead.started else feed, pool=self.pool, on_fed=on_fed)
        try:
            shard, verdict = _write_shard(
                setup, job, chunks, self.progress, writer_timings, self.hasher, self.rebuilds
            )
        finally:
            chunks.close()  # on an error too: its pause of the cyclic GC ends now
            _add_timings(summary.timings, encoder.timings, writer_timings)
        summary.bytes += job.nbytes
        self.skipped[0] += ahead.skipped[0]
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
    chunks: Iterator[EncodedChunk],
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
        for chunk in chunks:
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
