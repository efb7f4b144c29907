"""One plan for all ranks of a tokenize job, jobs claimed by whoever is free, summaries merged.

The job's owner (``joblock``) plans and writes ``data/.allllm/plans/<job>/plan.json``
atomically; the other ranks read it (no collective: tokenize stays free of torch), so
every rank runs the same shard jobs whatever the world size. A rank takes job ``k`` by
creating ``claims/<k>`` with ``O_EXCL`` and marks it ``done/<k>`` once its shard is in
place; a claim whose rank stopped heartbeating is taken over, after that rank's
journaled files are removed. Each rank writes ``summary-<rank>.json``; in a process
group rank 0 merges them into the run's summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from allllm.data.shard_format import STATE_DIR, read_meta
from allllm.data.tokenize import journal
from allllm.data.tokenize.joblock import HeldLock, owner_starting, rank_alive
from allllm.data.tokenize.plan import ExistingShard, ShardJob, TokenizePlan, WorkItem
from allllm.data.tokenize.summary import ShardSummary, TokenizeSummary
from allllm.errors import AllllmError, DataError, FormatVersionError
from allllm.util.atomic import atomic_write_text

__all__ = ["POLL_S", "SharedPlan", "forget_dead_plans", "job_dependencies", "merge_summaries"]

PLANS_DIR = "plans"
FORMAT_VERSION = 1
POLL_S = 0.2


def _source_dict(source: Any) -> dict[str, Any]:
    return {
        "path": os.path.abspath(source.path),
        "size": source.size,
        "format": source.format,
        "codec": source.codec,
    }


def _source(d: dict[str, Any]) -> Any:
    from allllm.data.raw import RawSource

    return RawSource(Path(d["path"]), int(d["size"]), d["format"], d["codec"])


def _plan_to_json(plan: TokenizePlan) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "jobs": [
            {
                "items": [
                    {
                        "source": _source_dict(i.source),
                        "start": i.start,
                        "end": i.end,
                        "sha256": i.sha256,
                        "why": i.why,
                        "inside_document": [i.open_start, i.open_end],
                    }
                    for i in job.items
                ],
                "supersedes": job.supersedes,
            }
            for job in plan.jobs
        ],
        "up_to_date": [_source_dict(s) for s in plan.up_to_date],
        "superseded": plan.superseded,
        "warnings": plan.warnings,
        "live": [{"stem": e.stem, "mtime_ns": e.mtime_ns} for e in plan.live],
    }


def _plan_from_json(data: dict[str, Any], data_dir: Path, where: Path) -> TokenizePlan:
    version = data.get("format_version")
    if type(version) is int and version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{where}: tokenize plan of format_version {version}, newer than this allllm "
            f"reads ({FORMAT_VERSION})",
            "run the same allllm version on every rank",
        )
    jobs = [
        ShardJob(
            [
                WorkItem(
                    _source(i["source"]),
                    i["start"],
                    i["end"],
                    i["sha256"],
                    i["why"],
                    *i.get("inside_document", (False, False)),
                )
                for i in job["items"]
            ],
            list(job["supersedes"]),
        )
        for job in data["jobs"]
    ]
    live = []
    for entry in data["live"]:
        meta = read_meta(data_dir / f"{entry['stem']}.meta.json")
        live.append(ExistingShard(entry["stem"], meta, entry["mtime_ns"]))
    up_to_date = [_source(s) for s in data["up_to_date"]]
    return TokenizePlan(jobs, up_to_date, list(data["superseded"]), list(data["warnings"]), live)


class SharedPlan:
    """The plan and claims of one job in one data dir (see the module docstring)."""

    def __init__(self, hold: HeldLock) -> None:
        self.hold = hold
        self.data_dir = hold.data_dir
        self.folder = self.data_dir / STATE_DIR / PLANS_DIR / hold.job
        self.plan_path = self.folder / "plan.json"
        self.error_path = self.folder / "error.json"
        self.started = time.time()

    # -- the plan -----------------------------------------------------------------------------
    def publish(self, plan: TokenizePlan) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "claims").mkdir(exist_ok=True)
        (self.folder / "done").mkdir(exist_ok=True)
        atomic_write_text(self.plan_path, json.dumps(_plan_to_json(plan)))

    def publish_error(self, exc: AllllmError) -> None:
        """The owner could not plan: the other ranks stop with the same message."""
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.error_path, json.dumps({"message": str(exc)}))

    def published(self) -> TokenizePlan | None:
        try:
            data = json.loads(self.plan_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.plan_path}: cannot read the job's plan ({exc})") from None
        return _plan_from_json(data, self.data_dir, self.plan_path)

    def wait(self) -> TokenizePlan:
        """The plan the owner publishes (a rank that joined the job waits for it)."""
        while True:
            plan = self.published()
            if plan is not None:
                return plan
            if self.error_path.exists():
                message = json.loads(self.error_path.read_text(encoding="utf-8"))["message"]
                raise DataError(f"the rank that plans this job failed: {message}")
            if not self._others_alive():
                raise DataError(
                    f"{self.data_dir}: the rank that plans job {self.hold.job} stopped before "
                    "publishing its plan",
                    "run the tokenize job again",
                )
            time.sleep(POLL_S)

    def _others_alive(self) -> bool:
        """Whether another process of this job still runs (its heartbeat is fresh)."""
        me = self.hold.world
        folder = self.data_dir / STATE_DIR / "jobs" / self.hold.job
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                name = entry.name
                if not name.startswith("rank-") or not name[5:].isdigit():
                    continue
                rank = int(name[5:])
                if rank != me.rank and rank_alive(self.data_dir, self.hold.job, rank, me.host):
                    return True
        return owner_starting(self.data_dir, self.hold.job, me.host)

    # -- claims -------------------------------------------------------------------------------
    def is_done(self, k: int) -> bool:
        return (self.folder / "done" / str(k)).exists()

    def claimant(self, k: int) -> dict[str, Any] | None:
        try:
            data = json.loads((self.folder / "claims" / str(k)).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def take(self, k: int) -> bool:
        """Claim job ``k``: True when this rank should run it now."""
        if self.is_done(k):
            return False
        world = self.hold.world
        path = self.folder / "claims" / str(k)
        mine = {"rank": world.rank, "host": world.host, "pid": world.pid}
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = self.claimant(k)
            if holder is None:
                return False  # being written by its claimant right now
            if holder.get("rank") == world.rank and holder.get("pid") == world.pid:
                return False
            if rank_alive(self.data_dir, self.hold.job, int(holder["rank"]), world.host):
                return False
            journal.clean_rank(self.data_dir, self.hold.job, int(holder["rank"]))
            atomic_write_text(path, json.dumps(mine))  # the dead rank's job: take it over
            return self.claimant(k) == mine and not self.is_done(k)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(mine))
        return True

    def finish(self, k: int) -> None:
        atomic_write_text(self.folder / "done" / str(k), str(self.hold.world.rank))

    # -- summaries ----------------------------------------------------------------------------
    def write_summary(self, summary: TokenizeSummary) -> None:
        path = self.folder / f"summary-{self.hold.world.rank}.json"
        atomic_write_text(path, json.dumps(summary.to_dict()))

    def merged_summary(self, own: TokenizeSummary, world_size: int) -> TokenizeSummary:
        """Rank 0 of a process group: every rank's part together (waits for each rank that
        still runs)."""
        parts = {self.hold.world.rank: own}
        while len(parts) < world_size:
            for rank in range(world_size):
                if rank in parts:
                    continue
                path = self.folder / f"summary-{rank}.json"
                if path.exists():
                    with contextlib.suppress(ValueError, OSError):
                        parts[rank] = _summary_from_dict(json.loads(path.read_text("utf-8")))
                elif time.time() - self.started > 10 and not rank_alive(
                    self.data_dir, self.hold.job, rank, self.hold.world.host
                ):  # never started, or died: its part is lost
                    parts[rank] = TokenizeSummary()
            if len(parts) < world_size:
                time.sleep(POLL_S)
        return merge_summaries([parts[r] for r in sorted(parts)], own)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _summary_from_dict(data: dict[str, Any]) -> TokenizeSummary:
    names = {f.name for f in fields(TokenizeSummary)}
    kept = {k: v for k, v in data.items() if k in names}
    kept["shards"] = [ShardSummary(**s) for s in kept.get("shards", [])]
    return TokenizeSummary(**kept)


def merge_summaries(parts: list[TokenizeSummary], own: TokenizeSummary) -> TokenizeSummary:
    """The whole job's summary: shards, counts and timings of every rank; the plan's view
    (sources, up to date) from ``own``."""
    out = TokenizeSummary(**{k: v for k, v in asdict(own).items() if k != "shards"})
    out.shards = [s for p in parts for s in p.shards]
    out.shards.sort(key=lambda s: s.stem)
    for name in ("superseded", "unchanged", "replaced", "cleaned", "warnings"):
        setattr(out, name, sorted({x for p in parts for x in getattr(p, name)}))
    out.bytes = sum(p.bytes for p in parts)
    out.empty_records = sum(p.empty_records for p in parts)
    out.seconds = max(p.seconds for p in parts)
    out.timings = {k: sum(p.timings.get(k, 0.0) for p in parts) for k in own.timings}
    return out


def forget_dead_plans(data_dir: Path, hold: HeldLock) -> list[str]:
    """Remove the plan folders of other jobs (the owner holds the lock: they are over).
    Their finished shards are live shards; what they left undone is planned again."""
    root = data_dir / STATE_DIR / PLANS_DIR
    gone = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            if entry.name != hold.job and entry.is_dir():
                shutil.rmtree(entry.path, ignore_errors=True)
                gone.append(entry.name)
    return gone


def job_dependencies(plan: TokenizePlan) -> dict[int, set[int]]:
    """job -> the jobs that must be done before it may start.

    A source redone whole and cut into several shards names the shards it replaces in
    the shard of its first part; that shard must be committed before the other parts',
    or naming an old id that an unchanged later part reproduces would retire the new
    part too. So a job holding a later part waits for the job holding part 0 (always an
    earlier job: items keep their order). One process runs jobs in order anyway.
    """
    first: dict[str, int] = {}  # source path -> the job holding its byte 0, if it supersedes
    for k, job in enumerate(plan.jobs):
        for item in job.items:
            if item.start == 0 and job.supersedes:
                first.setdefault(os.path.abspath(item.source.path), k)
    deps: dict[int, set[int]] = {}
    for k, job in enumerate(plan.jobs):
        for item in job.items:
            i = first.get(os.path.abspath(item.source.path))
            if item.start > 0 and i is not None and i != k:
                deps.setdefault(k, set()).add(i)
    return deps
