"""The real CLI in a subprocess: SIGKILL mid-run then resume; SIGTERM / SIGINT / SIGUSR1 stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train_helpers import cli, make_workspace, same_weights, seen, weights

pytestmark = pytest.mark.slow

BIG = {"n_files": 3, "words": 6000}  # a few hundred steps of the micro model


def _start_train(root: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALLLLM_DEBUG": ""}
    return subprocess.Popen(
        [sys.executable, "-m", "allllm", "train", "--model", "micro", "--only-new", *args],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_step(root: Path, proc: subprocess.Popen, step: int, timeout: float = 120) -> None:
    metrics = root / "checkpoints" / "micro" / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"train ended early: {proc.communicate()}")
        if metrics.exists():
            lines = metrics.read_text().splitlines()
            if lines:
                try:
                    if json.loads(lines[-1])["step"] >= step:
                        return
                except ValueError:
                    pass
        time.sleep(0.01)
    raise AssertionError("train did not reach the step in time")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """An uninterrupted run of the same data: its final weights and seen records."""
    root = make_workspace(tmp_path_factory.mktemp("reference"), **BIG)
    cli(root, "tokenize", "--model", "micro", "--quiet")
    cli(root, "train", "--model", "micro", "--only-new", "--quiet")
    return root, weights(root), seen(root)


def test_sigkill_mid_run_then_resume_equals_uninterrupted(
    tmp_path: Path, reference: tuple[Path, dict, dict]
) -> None:
    _, ref_weights, ref_seen = reference
    root = make_workspace(tmp_path, **BIG)
    cli(root, "tokenize", "--model", "micro", "--quiet")
    proc = _start_train(root)
    _wait_for_step(root, proc, 10)  # past the first checkpoints (checkpoint_every 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (root / "checkpoints/micro/seen_datasets.json").exists()  # nothing recorded yet
    resumed = cli(root, "train", "--model", "micro", "--only-new")
    assert "resuming pending run" in resumed.stderr + resumed.stdout
    assert same_weights(weights(root), ref_weights)
    mine = seen(root)
    assert mine.keys() == ref_seen.keys()
    assert [r["step"] for r in mine.values()] == [r["step"] for r in ref_seen.values()]


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGUSR1, 0)]
)
def test_stop_signals_save_and_exit(
    tmp_path: Path, reference: tuple[Path, dict, dict], sig: signal.Signals, code: int
) -> None:
    _, ref_weights, _ = reference
    root = make_workspace(tmp_path, **BIG)
    cli(root, "tokenize", "--model", "micro", "--quiet")
    proc = _start_train(root)
    _wait_for_step(root, proc, 6)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "pending" in err and "Traceback" not in err
    from allllm.train.checkpoint import latest_checkpoint

    ref = latest_checkpoint(root / "checkpoints/micro")
    assert ref is not None
    state = ref.read_state()
    assert state.run_complete is False
    last = json.loads((root / "checkpoints/micro/metrics.jsonl").read_text().splitlines()[-1])
    assert ref.step == last["step"]  # saved at the step the signal interrupted
    cli(root, "train", "--model", "micro", "--only-new", "--quiet")
    assert same_weights(weights(root), ref_weights)
