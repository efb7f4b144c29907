"""The GPU proof's script (benchmarks/bench_gpu_proof.py, issue 20) in its CPU --smoke mode.

The script must run right the first time on a GPU machine lent for minutes, so its CPU
smoke mode runs every phase end to end here (env, matmul, phi-2-shaped and ~1B-shaped
training through the real ``train()``, the one save, the load back, the report). No
timing is asserted; the fields a GPU run fills are checked to exist with sane values or
to be null with a reason. The CUDA-event step timer is checked with fake events.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_gpu_proof.py"


def _run(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env.pop("OUT", None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def _load(out: Path, phase: str) -> dict[str, Any]:
    return json.loads((out / f"{phase}.json").read_text())


@pytest.mark.slow
def test_smoke_runs_every_phase_on_cpu(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    proc = _run("--smoke", "--device", "cpu", "--out", str(out), "--workdir", str(work))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    env = _load(out, "env")
    assert env["status"] == "ok" and env["device"] == "cpu"
    assert env["torch"] and env["python"] and env["peak_flops"] is None and env["peak_note"]

    mm = _load(out, "matmul")
    assert mm["status"] == "ok" and mm["dtype"] == "float32"
    assert mm["ceiling_tflops"] > 0

    for phase in ("phi2", "phi1b"):
        d = _load(out, phase)
        assert d["status"] == "ok", d.get("error") or d.get("reason")
        assert d["smoke"] is True and d["stage"] == "done"
        assert d["train_status"] == "bounded" and d["steps"] >= 1  # a time cap may stop early
        assert d["tokens_per_s"] > 0 and d["tokens_per_s_median_step"] > 0
        assert d["parameters"] > 0 and d["flops_per_token"] > 0
        # MFU: no dense bf16 peak on a CPU (null, with the reason), but the measured
        # fp32 matmul ceiling gives a figure
        assert d["mfu_vs_peak"] is None and d["mfu_note"]
        assert d["mfu_vs_ceiling"] > 0
        # memory: no allocator peak on CPU (null with a reason); the plan's total is there
        assert d["peak_memory_bytes"] is None and d["peak_memory_note"]
        assert d["rss_peak_bytes"] > 0
        assert "plan_total_bytes" in d
        assert d["plan_total_bytes"] is None or d["plan_total_bytes"] > 0
        assert d["plan_total_bytes"] is not None or d["plan_note"]
        breakdown = d["breakdown_ms"]
        for key in ("fetch", "forward", "backward", "clip", "optimizer", "other", "step"):
            assert key in breakdown
        assert breakdown["forward"] > 0 and breakdown["backward"] > 0
        assert breakdown["optimizer"] > 0 and breakdown["step"] > 0
        assert d["first_step_s"] > 0 and d["compile"] is False and d["compile_s"] is None
        # one save, then the load back through train --dry-run, then the checkpoints go
        assert d["save_s"] > 0 and d["checkpoint_bytes"] > 0
        assert "model.safetensors" in d["checkpoint_files"]
        assert d["load_s"] > 0 and d["load_model_s"] > 0 and d["load_optimizer_s"] > 0
        assert d["dry_run_status"] == "dry-run" and d["checkpoints_deleted"] is True
        assert not (work / "seq128" / "checkpoints" / phase).exists()
    stopped = {_load(out, p)["stopped_by"] for p in ("phi2", "phi1b")}
    assert any("--max-steps" in s for s in stopped)  # phi2 smoke: the step bound
    assert any("--steady-s" in s or "--max-steps" in s for s in stopped)  # phi1b: either

    table = (out / "report.md").read_text()
    assert "SMOKE" in table and "phi-2 shape, smoke" in table and "phi ~1B layout" in table
    assert "tokens/s" in table and "MFU vs ceiling" in table and "save s" in table
    again = _run("--phase", "report", "--out", str(out), timeout=30)
    assert again.returncode == 0 and "phi-2 shape, smoke" in again.stdout


def test_phases_past_the_budget_are_skipped_with_a_reason(tmp_path: Path) -> None:
    """The orchestrator imports no torch: a budget too small for any phase costs nothing."""
    out = tmp_path / "out"
    proc = _run("--smoke", "--budget-s", "3", "--out", str(out), "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 1
    for phase in ("env", "matmul", "phi2", "phi1b"):
        d = _load(out, phase)
        assert d["status"] == "skipped" and "budget" in d["reason"]
    assert "skipped" in (out / "report.md").read_text()


def test_set_rejects_unknown_keys(tmp_path: Path) -> None:
    proc = _run("--smoke", "--set", "phi2.nope=1", "--out", str(tmp_path), timeout=30)
    assert proc.returncode != 0 and "PHASE.KEY=VALUE" in proc.stderr


def test_cuda_event_timer_reads_each_step_one_step_late(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU path of the step timer, with fake CUDA events (their times are fixed)."""
    import torch

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_gpu_proof as proof
    finally:
        sys.path.remove(str(SCRIPT.parent))

    clock = iter(range(1000))
    read: list[int] = []

    class FakeEvent:
        def __init__(self, enable_timing: bool = False) -> None:
            assert enable_timing
            self.t = -1

        def record(self) -> None:
            self.t = next(clock)

        def elapsed_time(self, end: FakeEvent) -> float:  # milliseconds, like CUDA's
            read.append(end.t)
            return float(end.t - self.t) * 1000

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 123)
    marks = proof.Marks(cuda=True)
    for _step in range(3):
        marks.begin()
        marks.add_cpu("fetch", 0.5)
        marks.start("forward")
        marks.stop("forward")  # 1 tick
        marks.start("backward")
        marks.stop("backward")
        marks.start("optimizer")
        marks.stop("optimizer")
        marks.step_done()
        # step k's events are read at the end of step k + 1, never sooner (no sync)
        assert len(read) == 3 * (len(marks.steps) - 1)
    marks.finish()
    assert len(read) == 9
    for row in marks.steps:
        assert row["forward"] == row["backward"] == row["optimizer"] == 1.0
        assert row["fetch"] == 0.5
    assert marks.peak_train == 123 and marks.first_done is not None
