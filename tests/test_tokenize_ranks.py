"""Tokenize as many processes: torchrun ranks, job-array tasks, a killed rank, a second job.

"Equal" is the issue's definition: the same set of shard_ids, and per shard_id the same
sha256 of every data file and sidecar and the same sources and byte ranges (names carry
timestamps and may differ).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from allllm.data.shard_format import INFLIGHT_DIR, META_SUFFIX, read_meta
from allllm.data.tokenize.run import tokenize
from allllm.data.tokenize.world import resolve_world
from allllm.errors import ConfigError
from tokenize_helpers import make_config, real_text, write_raw


def _workspace(root: Path, n_files: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n_files):
        write_raw(f"f{k}.txt", real_text(4000 + 700 * k, start=k), root=root)
    cfg = make_config(document_boundary="line").model_dump(mode="json")
    (root / "configs").mkdir(exist_ok=True)
    (root / "configs" / "m.json").write_text(json.dumps({**cfg, "name": "m"}))
    return root


def _layout(data_dir: Path) -> dict[str, Any]:
    """shard_id -> its shards' (file digests by role, docs digest, sources)."""
    out: dict[str, Any] = {}
    for meta_path in sorted(data_dir.glob(f"*{META_SUFFIX}")):
        meta = read_meta(meta_path)
        files = {role: info.sha256 for role, info in meta.files.items()}
        docs = meta.documents.sha256 if meta.documents is not None else None
        sources = [(Path(s.path).name, s.size, s.sha256, tuple(s.byte_range)) for s in meta.sources]
        out.setdefault(meta.shard_id, []).append(repr((files, docs, sources)))
    return {k: sorted(v) for k, v in out.items()}  # one id twice: an old and a new shard


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALLLLM_DEBUG": "", **extra}
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "ALLLLM_FAULT"):
        if key not in extra:
            env.pop(key, None)
    return env


def _torchrun(root: Path, nproc: int, *args: str, **env: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "allllm", "tokenize", "--model", "m", *args,
    ]  # fmt: skip
    return subprocess.run(
        cmd, cwd=root, capture_output=True, text=True, env=_env(**env), timeout=300
    )


def _cli(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "allllm", "tokenize", "--model", "m", *args]
    return subprocess.run(
        cmd, cwd=root, capture_output=True, text=True, env=_env(**env), timeout=300
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One process: the layout every world size must reproduce."""
    root = _workspace(tmp_path_factory.mktemp("one"))
    proc = _cli(root, "--quiet")
    assert proc.returncode == 0, proc.stderr
    return _layout(root / "data")


def test_two_torchrun_ranks_equal_one_process(tmp_path: Path, reference: dict) -> None:
    root = _workspace(tmp_path / "ws")
    proc = _torchrun(root, 2, "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _layout(root / "data") == reference
    summary = json.loads(proc.stdout)  # rank 0 alone prints, for every rank
    assert len(summary["shards"]) == len(reference) and summary["sources"] == 6
    assert not list((root / "data" / INFLIGHT_DIR).iterdir())
    assert _cli(root, "--json").returncode == 0  # a rerun: everything up to date
    assert _layout(root / "data") == reference


def test_array_tasks_one_after_the_other_equal_one_process(
    workspace: Path, reference: dict
) -> None:
    _workspace(workspace)
    cfg = make_config(document_boundary="line")
    parts = [tokenize(cfg, world=resolve_world(r, 2, "array-7", env={})) for r in (0, 1)]
    assert _layout(cfg.data_dir) == reference
    assert len(parts[0].shards) + len(parts[1].shards) == len(reference)
    assert not tokenize(cfg).shards  # a later lone run finds everything up to date


def test_a_killed_rank_then_a_one_process_rerun_finishes_only_the_rest(
    tmp_path: Path, reference: dict
) -> None:
    root = _workspace(tmp_path / "ws")
    # rank 1 of a two-task job runs first (array tasks need not overlap) and is SIGKILLed
    # while writing its second shard: deterministic, whatever the machine's speed
    args = ("--rank", "1", "--world-size", "2", "--job-id", "arr", "--quiet")
    proc = _cli(root, *args, ALLLLM_FAULT="tokenize.rows:2", ALLLLM_FAULT_RANK="1")
    assert proc.returncode == -9, proc.stderr  # killed midway
    done = _layout(root / "data")
    assert set(done) < set(reference)  # some shards made it, complete; none is wrong
    assert all(reference[i] == v for i, v in done.items())
    # status shows the whole job: what is done, and that no rank runs it now
    cmd = [sys.executable, "-m", "allllm", "status", "--model", "m", "--json"]
    status = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=_env())
    job = json.loads(status.stdout)["tokenize_job"]
    assert job["job"] == "arr" and not job["running"] and job["ranks_alive"] == []
    assert (job["jobs"], job["jobs_done"]) == (len(reference), len(done))
    assert 0 < job["bytes_done"] < job["bytes"]
    assert any("tokenize job arr has work left" in n for n in json.loads(status.stdout)["notes"])
    rerun = _cli(root, "--json")
    assert rerun.returncode == 0, rerun.stderr
    assert _layout(root / "data") == reference
    assert len(json.loads(rerun.stdout)["shards"]) == len(reference) - len(done)
    assert not list((root / "data" / INFLIGHT_DIR).iterdir())


def test_world_size_five_with_three_sources(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws", n_files=3)
    proc = _torchrun(root, 5, "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(_layout(root / "data")) == 3
    assert len(json.loads(proc.stdout)["shards"]) == 3


def test_a_second_job_is_refused_while_ranks_of_one_job_join(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws", n_files=2)
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time; from pathlib import Path\n"
            "from allllm.data.tokenize.joblock import job_lock\n"
            "from allllm.data.tokenize.world import resolve_world\n"
            "w = resolve_world(0, 2, 'first', env={})\n"
            "with job_lock(Path('data'), w):\n"
            "    print('held', flush=True); time.sleep(60)\n",
        ],
        cwd=root, stdout=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        other = _cli(root, "--rank", "0", "--world-size", "2", "--job-id", "second")
        assert other.returncode == 1
        assert len(other.stderr.strip().splitlines()) == 1, other.stderr
        assert "another `allllm tokenize` is writing to data" in other.stderr
        assert "job first" in other.stderr
        cmd = [sys.executable, "-m", "allllm", "tokenize", "--model", "m", "--rank", "1"]
        cmd += ["--world-size", "2", "--job-id", "first"]
        joined = subprocess.Popen(cmd, cwd=root, stderr=subprocess.PIPE, text=True, env=_env())
        time.sleep(3)
        assert joined.poll() is None  # it joined the job and waits for the owner's plan
    finally:
        holder.kill()
        holder.wait()
    assert joined.wait(timeout=60) == 1  # the owner died before planning: one clear line
    assert "stopped before publishing its plan" in (joined.stderr.read() if joined.stderr else "")
    assert _cli(root, "--quiet").returncode == 0  # the killed holder no longer blocks


def test_world_from_launchers_and_flags() -> None:
    w = resolve_world(env={"RANK": "3", "WORLD_SIZE": "8", "TORCHELASTIC_RUN_ID": "abc"})
    assert (w.rank, w.world_size, w.job_id, w.launcher, w.simultaneous) == (
        3, 8, "abc", "torchrun", True,
    )  # fmt: skip
    w = resolve_world(env={"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "99"})
    assert (w.rank, w.world_size, w.launcher, w.job_id) == (1, 4, "slurm", "99.0")
    w = resolve_world(2, 4, "arr", env={"RANK": "0", "WORLD_SIZE": "1"})  # flags win
    assert (w.rank, w.world_size, w.simultaneous) == (2, 4, False)
    for bad in [(0, None, None), (4, 4, "x"), (1, 2, None)]:
        with pytest.raises(ConfigError):
            resolve_world(*bad, env={})
    assert resolve_world(env={}).world_size == 1
    static = {"RANK": "1", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none"}
    with pytest.raises(ConfigError, match="nothing names the job"):
        resolve_world(env=static)
    w = resolve_world(env={**static, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"})
    assert w.job_id == "10.0.0.1-29500"


def test_journal_entries_name_their_writer(workspace: Path, monkeypatch) -> None:
    """What a rank writes is journaled with job, rank, host and pid (so only a dead
    writer's files are ever cleaned)."""
    import allllm.data.tokenize.journal as journal

    write_raw("a.txt", real_text(3000))
    cfg = make_config()
    seen: list[dict] = []
    real = journal._write_entry

    def spy(data_dir: Path, stem: str, files: list[str], **kw: Any) -> Path:
        entry = real(data_dir, stem, files, **kw)
        seen.append(json.loads(entry.read_text()))
        return entry

    monkeypatch.setattr(journal, "_write_entry", spy)
    tokenize(cfg, world=resolve_world(0, 1, "solo", env={}))
    (record,) = seen
    assert record["job"] == "solo" and record["rank"] == 0 and record["pid"] == os.getpid()
    assert record["host"] == socket.gethostname()
    shutil.rmtree(cfg.data_dir / ".allllm" / "plans", ignore_errors=True)


def _live_ids(data_dir: Path) -> set[str]:
    from allllm.data.tokenize.plan import existing_shards, live_shards

    return {s.meta.shard_id for s in live_shards(existing_shards(data_dir))}


def _split_workspace(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_raw("big.txt", real_text(30000, start=4), root=root)
    write_raw("small.txt", real_text(2000, start=5), root=root)
    cfg = make_config(document_boundary="line", shard_bytes=4000).model_dump(mode="json")
    (root / "configs").mkdir(exist_ok=True)
    (root / "configs" / "m.json").write_text(json.dumps({**cfg, "name": "m"}))
    return root


def test_a_changed_source_in_parts_gives_the_same_live_shards_on_two_ranks(
    tmp_path: Path,
) -> None:
    """Editing the start of a source cut into parts redoes it whole: its first part names
    the old shards, the unchanged later parts reproduce old ids and must stay live."""
    roots = [_split_workspace(tmp_path / name) for name in ("one", "two")]
    for root in roots:
        assert _cli(root, "--quiet").returncode == 0
        big = root / "data" / "raw" / "big.txt"
        big.write_text("A changed first line.\n" + big.read_text()[40:])
    assert _cli(roots[0], "--quiet").returncode == 0
    proc = _torchrun(roots[1], 2, "--quiet")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _layout(roots[1] / "data") == _layout(roots[0] / "data")
    live = _live_ids(roots[0] / "data")
    assert _live_ids(roots[1] / "data") == live and len(live) > 5


def test_later_parts_of_a_superseding_source_wait_for_its_first() -> None:
    from allllm.data.raw import RawSource
    from allllm.data.tokenize.plan import ShardJob, TokenizePlan, WorkItem
    from allllm.data.tokenize.shared_plan import job_dependencies

    a = RawSource(Path("/x/a.txt"), 30, "txt", None)
    b = RawSource(Path("/x/b.txt"), 30, "txt", None)
    jobs = [
        ShardJob([WorkItem(a, 0, 10, None, "changed")], ["old-id"]),
        ShardJob([WorkItem(a, 10, 20, None, "changed")]),
        ShardJob([WorkItem(a, 20, 30, None, "changed"), WorkItem(b, 20, 30, None, "appended")]),
        ShardJob([WorkItem(b, 0, 10, None, "new")]),
    ]
    deps = job_dependencies(TokenizePlan(jobs, [], [], []))
    assert deps == {1: {0}, 2: {0}}


def test_spawned_workers_on_one_machine_equal_one_process(
    tmp_path: Path, reference: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _workspace(tmp_path / "ws")
    proc = _cli(root, "--workers", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _layout(root / "data") == reference
    summary = json.loads(proc.stdout)
    assert len(summary["shards"]) == len(reference)
    assert not list((root / "data" / ".allllm" / "plans").iterdir())  # rank 0 cleaned up
    # the library call, redone: rank 0's bars end at every rank's bytes, not only its own
    from allllm.config import load_config
    from allllm.data.tokenize.local_workers import tokenize_with_workers
    from allllm.data.tokenize.summary import NoProgress

    class Bars(NoProgress):
        total = own = others = 0

        def begin(self, total_bytes: int, n_shards: int) -> None:
            self.total = total_bytes

        def advance(self, nbytes: int, ntokens: int) -> None:
            self.own += nbytes

        def advance_others(self, nbytes: int, ntokens: int) -> None:
            self.others += nbytes

    import allllm.data.tokenize.jobs as jobs

    real_run = jobs.JobRunner.run

    def slow_run(self: Any, job: Any, on_fed: Any = None) -> None:
        time.sleep(1.5)  # rank 0 only (the spawned rank is not patched): rank 1 gets jobs
        real_run(self, job, on_fed)

    monkeypatch.setattr(jobs.JobRunner, "run", slow_run)
    monkeypatch.chdir(root)
    monkeypatch.setenv("RAYON_NUM_THREADS", "1")  # set by tokenize_with_workers: undone after
    bars = Bars()
    tokenize_with_workers(load_config(model="m"), 2, force=True, progress=bars)
    assert bars.total > 0 and bars.others > 0 and bars.own + bars.others == bars.total
    assert _layout(root / "data") == reference
    bad = _torchrun(root, 2, "--workers", "2")
    assert bad.returncode != 0 and "--workers 2 with torchrun ranks" in bad.stderr


def test_a_joining_rank_waits_for_an_owner_that_has_not_beaten_yet(tmp_path: Path) -> None:
    """Between the owner's lock and its first heartbeat a joining rank must wait, not
    take the owner for dead (a race seen under load)."""
    from allllm.data.tokenize.joblock import HeldLock, owner_starting
    from allllm.data.tokenize.shared_plan import SharedPlan

    data = tmp_path / "data"
    state = data / ".allllm"
    state.mkdir(parents=True)
    host = socket.gethostname()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock = {"format_version": 1, "job": "j", "host": host, "pid": owner.pid, "rank": 0}
        (state / "tokenize.job").write_text(json.dumps(lock))
        assert owner_starting(data, "j", host)
        joiner = resolve_world(1, 2, "j", env={})
        shared = SharedPlan(HeldLock(data, joiner, False, state / "jobs" / "j" / "rank-1"))
        assert shared._others_alive()
        (state / "jobs" / "j").mkdir(parents=True)
        (state / "jobs" / "j" / "rank-0").write_text(json.dumps({**lock, "rank": 0}))
        assert not owner_starting(data, "j", host) and shared._others_alive()
    finally:
        owner.kill()
        owner.wait()
    assert not shared._others_alive()  # the owner is gone: the joiner stops in one line


def test_rank_zero_shows_the_other_ranks_bytes_as_they_go(tmp_path: Path) -> None:
    """Each rank publishes its bytes; rank 0 adds the others' to its overall bar as they
    come (not only when their shard jobs end), never past the total."""
    from types import SimpleNamespace

    from allllm.data.tokenize.group_progress import RankProgress
    from allllm.data.tokenize.summary import NoProgress

    class Bars(NoProgress):
        def __init__(self) -> None:
            self.own = self.others = self.other_tokens = 0

        def advance(self, nbytes: int, ntokens: int) -> None:
            self.own += nbytes

        def advance_others(self, nbytes: int, ntokens: int) -> None:
            self.others += nbytes
            self.other_tokens += ntokens

    now = [0.0]

    def rank(r: int, bars: NoProgress) -> RankProgress:
        world = SimpleNamespace(rank=r, world_size=3)
        shared = SimpleNamespace(folder=tmp_path, hold=SimpleNamespace(world=world))
        return RankProgress(bars, shared, publish=True, gather=r == 0, clock=lambda: now[0])

    bars = Bars()
    zero, one, two = rank(0, bars), rank(1, NoProgress()), rank(2, NoProgress())
    zero.begin(1000, 4)
    one.advance(100, 10)  # the first advance publishes; later ones wait PUBLISH_S
    one.advance(50, 5)
    two.advance(30, 3)
    zero.advance(20, 2)
    assert (bars.own, bars.others, bars.other_tokens) == (20, 130, 13)
    now[0] += 2.0
    one.advance(0, 0)  # publishes 150
    zero.advance(0, 0)
    assert bars.others == 180
    zero.done_elsewhere(400)  # a finished job counts whole, even before its rank's file says so
    assert bars.others == 400
    one.advance(900, 90)
    one.end_shard()
    now[0] += 2.0
    zero.end()
    assert bars.own + bars.others == 1000  # clamped at the total
    # a torn file counts as nothing, and nothing goes backwards
    (tmp_path / "progress-1.json").write_text("{")
    zero.poll(force=True)
    assert bars.own + bars.others == 1000
