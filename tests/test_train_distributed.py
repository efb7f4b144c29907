"""Scale-out on CPU: 2 ranks over gloo (DDP and FSDP2) train like one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train_helpers import cli, make_workspace, weights

pytestmark = pytest.mark.slow

STEPS = "6"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(
    root: Path, *args: str, env: dict[str, str] | None = None, expect_rc: int = 0
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **(env or {}),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
        "ALLLLM_DEBUG": "",
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "allllm", *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == expect_rc, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _losses(root: Path) -> list[float]:
    lines = (root / "checkpoints/micro/metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process: the reference loss curve."""
    root = make_workspace(tmp_path_factory.mktemp("single"), n_files=2, words=3000)
    cli(root, "tokenize", "--model", "micro", "--quiet")
    cli(root, "train", "--model", "micro", "--only-new", "--max-steps", STEPS, "--quiet")
    return root


def _copy_tokenized(single: Path, dest: Path, fsdp: bool) -> Path:
    shutil.copytree(single / "configs", dest / "configs")
    shutil.copytree(single / "data", dest / "data")
    if fsdp:
        path = dest / "configs/micro.json"
        cfg = json.loads(path.read_text())
        cfg["train"]["fsdp"] = True
        path.write_text(json.dumps(cfg))
    return dest


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_ranks_match_one_process(single: Path, tmp_path: Path, fsdp: bool) -> None:
    root = _copy_tokenized(single, tmp_path, fsdp)
    _torchrun(root, "train", "--model", "micro", "--only-new", "--max-steps", STEPS, "--quiet")
    ours, ref = _losses(root), _losses(single)
    assert len(ours) == len(ref) == int(STEPS)
    for a, b in zip(ours, ref):
        assert abs(a - b) < 1e-4 * max(1.0, abs(b))
    # the checkpoint holds full, unsharded weights: they load anywhere
    w, r = weights(root), weights(single)
    assert w.keys() == r.keys()
    for k in w:
        torch.testing.assert_close(w[k], r[k], rtol=1e-4, atol=1e-5)
    # only rank 0 wrote records: one metrics line a step
    assert len((root / "checkpoints/micro/metrics.jsonl").read_text().splitlines()) == int(STEPS)


def test_two_rank_run_resumes_on_one_process(single: Path, tmp_path: Path) -> None:
    root = _copy_tokenized(single, tmp_path, fsdp=True)
    _torchrun(root, "train", "--model", "micro", "--only-new", "--max-steps", "3", "--quiet")
    cfg = json.loads((root / "configs/micro.json").read_text())
    cfg["train"]["fsdp"] = False
    (root / "configs/micro.json").write_text(json.dumps(cfg))
    cli(root, "train", "--model", "micro", "--only-new", "--max-steps", "3", "--quiet")
    ours, ref = _losses(root), _losses(single)
    assert [round(x, 4) for x in ours] == [round(x, 4) for x in ref]


def test_a_nan_on_one_rank_is_skipped_by_every_rank(single: Path, tmp_path: Path) -> None:
    """The skip is decided together: rank 1's NaN gradients make rank 0 skip too.

    Under DDP, where each rank judges its own full gradients (under FSDP2 the global clip
    norm already spreads a NaN to every rank's shard, so it could not tell).
    """
    root = _copy_tokenized(single, tmp_path, fsdp=False)
    fault = {"ALLLLM_FAULT": "train.grad:2:nan", "ALLLLM_FAULT_RANK": "1"}
    _torchrun(
        root, "train", "--model", "micro", "--only-new", "--max-steps", "4", "--quiet", env=fault
    )
    lines = [
        json.loads(x) for x in (root / "checkpoints/micro/metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in lines if r["skipped"]] == [2]  # rank 0 writes the metrics
    assert torch.isfinite(
        torch.stack([t.float().abs().sum() for t in weights(root).values()])
    ).all()


def test_a_full_disk_on_rank_0_mid_run_stops_every_rank_with_its_line(
    single: Path, tmp_path: Path
) -> None:
    """Rank 0 alone writes a checkpoint; when that fails (ENOSPC at the first save, step 4)
    rank 1 must get the same one-line error rather than go on into the next step's
    collectives and die of a broken group (or wait for the timeout)."""
    root = _copy_tokenized(single, tmp_path, fsdp=False)
    fault = {"ALLLLM_FAULT": "checkpoint.files:1:enospc", "ALLLLM_FAULT_RANK": "0"}
    proc = _torchrun(
        root, "train", "--model", "micro", "--only-new", "--max-steps", "6", "--quiet",
        env=fault, expect_rc=1,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert out.count("the disk is full") >= 2, out[-3000:]  # one line from each rank
    assert "allllm/train/" not in out  # no frame of ours (torchrun prints its own report)
    assert not list((root / "checkpoints/micro").glob("step-*"))
