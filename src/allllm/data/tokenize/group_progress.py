"""Progress of a tokenize job across its ranks: live bars on rank 0, the whole in ``status``.

Every rank of a job with more than one rank writes ``plans/<job>/progress-<rank>.json``
— the input bytes and tokens it has encoded in this run — at most every ``PUBLISH_S``
and at the end of each shard job. In a process group (torchrun, srun, ``--workers``)
rank 0 reads the other ranks' files as it goes (during its own jobs and while it waits)
and adds their bytes to its overall bar, so a 64-rank job does not look stuck at
1/64 of its speed until the others' first shards are done. The files are advisory: a
missing or torn one counts as nothing, and the ``done/<k>`` markers stay the truth —
no rank ever waits for a progress file. :func:`job_overview` gives ``status`` the
job's state from the same files (array tasks run at different times: each reports
its own part, ``status`` the whole).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from allllm.data.shard_format import STATE_DIR
from allllm.util.atomic import atomic_write_text

if TYPE_CHECKING:
    from allllm.data.tokenize.shared_plan import SharedPlan
    from allllm.data.tokenize.summary import TokenizeProgress

__all__ = ["PUBLISH_S", "RankProgress", "job_overview"]

FORMAT_VERSION = 1
PUBLISH_S = 1.0  # how often a rank rewrites its progress file


def _progress_path(folder: Path, rank: int) -> Path:
    return folder / f"progress-{rank}.json"


def _read_progress(path: Path) -> tuple[int, int]:
    """(bytes, tokens) a rank published; (0, 0) when absent, torn or of a newer format."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0, 0
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        return 0, 0
    nbytes, ntokens = data.get("bytes"), data.get("tokens")
    if type(nbytes) is not int or type(ntokens) is not int:
        return 0, 0
    return max(nbytes, 0), max(ntokens, 0)


class RankProgress:
    """This rank's :class:`TokenizeProgress`, wrapped: ``publish`` writes its own figures
    for the job, ``gather`` (rank 0 of a process group) shows the others' on the inner
    progress's overall bar (``advance_others``)."""

    def __init__(
        self,
        inner: TokenizeProgress,
        shared: SharedPlan,
        *,
        publish: bool,
        gather: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self._folder = shared.folder
        self._rank = shared.hold.world.rank
        self._world_size = shared.hold.world.world_size
        self._publish, self._gather, self._clock = publish, gather, clock
        self._bytes = self._tokens = 0  # this rank's, over its jobs of this run
        self._others_done = 0  # input bytes of the jobs other ranks finished
        self._shown = [0, 0]  # the other ranks' bytes and tokens on the bar so far
        self._total = 0
        self._published_at = self._polled_at = -math.inf
        # rank 0 reads world_size - 1 files a poll: keep it near 100 reads a second
        self._poll_s = max(0.5, self._world_size / 100)
        forward = getattr(inner, "advance_others", None)
        self._advance_others: Callable[[int, int], None] = forward or inner.advance

    # -- TokenizeProgress ---------------------------------------------------------------------
    def begin(self, total_bytes: int, n_shards: int) -> None:
        self._total = total_bytes
        self.inner.begin(total_bytes, n_shards)

    def begin_shard(self, name: str, nbytes: int) -> None:
        self.inner.begin_shard(name, nbytes)

    def begin_file(self, name: str, nbytes: int) -> None:
        self.inner.begin_file(name, nbytes)

    def advance(self, nbytes: int, ntokens: int) -> None:
        self.inner.advance(nbytes, ntokens)
        self._bytes += nbytes
        self._tokens += ntokens
        if self._publish and self._clock() - self._published_at >= PUBLISH_S:
            self.publish()
        self.poll()

    def end_shard(self) -> None:
        self.inner.end_shard()
        if self._publish:
            self.publish()

    def end(self) -> None:
        if self._publish:
            self.publish()
        self.poll(force=True)
        self.inner.end()

    # -- the job's other ranks ----------------------------------------------------------------
    def publish(self) -> None:
        """Write this rank's figures (best effort: a full disk must not stop the job)."""
        self._published_at = self._clock()
        record = {
            "format_version": FORMAT_VERSION,
            "rank": self._rank,
            "pid": os.getpid(),
            "bytes": self._bytes,
            "tokens": self._tokens,
        }
        with contextlib.suppress(OSError):
            atomic_write_text(_progress_path(self._folder, self._rank), json.dumps(record))

    def done_elsewhere(self, nbytes: int) -> None:
        """Another rank finished a shard job of ``nbytes`` input bytes."""
        self._others_done += nbytes
        self.poll(force=True)

    def poll(self, force: bool = False) -> None:
        """Bring the other ranks' bytes onto the bar (at most every ``_poll_s``)."""
        if not self._gather or (not force and self._clock() - self._polled_at < self._poll_s):
            return
        self._polled_at = self._clock()
        live_bytes = live_tokens = 0
        for rank in range(self._world_size):
            if rank != self._rank:
                nbytes, ntokens = _read_progress(_progress_path(self._folder, rank))
                live_bytes += nbytes
                live_tokens += ntokens
        # a finished job counts whole even if its rank's last file never came; a job a
        # dead rank left half done and another redid must not push the bar past the end
        target = min(max(live_bytes, self._others_done), max(self._total - self._bytes, 0))
        add_bytes = max(target - self._shown[0], 0)
        add_tokens = max(live_tokens - self._shown[1], 0)
        if add_bytes or add_tokens:
            self._shown[0] += add_bytes
            self._shown[1] += add_tokens
            self._advance_others(add_bytes, add_tokens)


def job_overview(data_dir: Path) -> dict[str, Any] | None:
    """The tokenize job of ``data_dir`` that is running, or stopped with work left.

    ``{"job", "running", "ranks_alive", "jobs", "jobs_done", "bytes", "bytes_done"}``, or
    None when no job's plan is there with work left. Read-only, torch-free, cheap: one
    plan file, the ``done/`` listing and the ranks' progress and heartbeat files.
    """
    from allllm.data.tokenize.joblock import rank_alive
    from allllm.data.tokenize.shared_plan import PLANS_DIR

    state = data_dir / STATE_DIR
    host = socket.gethostname()
    best: dict[str, Any] | None = None
    with contextlib.suppress(OSError):
        for entry in os.scandir(state / PLANS_DIR):
            folder = Path(entry.path)
            try:
                plan = json.loads((folder / "plan.json").read_text(encoding="utf-8"))
                sizes = [
                    sum(int(i["end"]) - int(i["start"]) for i in job["items"])
                    for job in plan["jobs"]
                ]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being written, or not a plan this allllm reads
            done: set[int] = set()
            with contextlib.suppress(OSError):
                done = {int(n) for n in os.listdir(folder / "done") if n.isdigit()}
            done &= set(range(len(sizes)))
            if len(done) == len(sizes):
                continue  # finished: nothing to report
            published = 0
            with contextlib.suppress(OSError):
                for name in os.listdir(folder):
                    if name.startswith("progress-") and name.endswith(".json"):
                        published += _read_progress(folder / name)[0]
            beats = state / "jobs" / entry.name
            alive: list[int] = []
            with contextlib.suppress(OSError):
                for name in os.listdir(beats):
                    rank = int(name[5:]) if name.startswith("rank-") and name[5:].isdigit() else -1
                    if rank >= 0 and rank_alive(data_dir, entry.name, rank, host):
                        alive.append(rank)
            total = sum(sizes)
            view = {
                "job": entry.name,
                "running": bool(alive),
                "ranks_alive": sorted(alive),
                "jobs": len(sizes),
                "jobs_done": len(done),
                "bytes": total,
                "bytes_done": min(max(published, sum(sizes[k] for k in done)), total),
            }
            if best is None or (view["running"] and not best["running"]):
                best = view
    return best
