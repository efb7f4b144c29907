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


@pytest.fixture(scope="module")
def fsdp_straight(single: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All steps under FSDP on 2 ranks in one run: what a resumed 2-rank run must equal."""
    root = _copy_tokenized(single, tmp_path_factory.mktemp("fsdp_straight"), fsdp=True)
    _torchrun(root, "train", "--model", "micro", "--only-new", "--max-steps", STEPS, "--quiet")
    return root


# Weights of 2 ranks against one process: the gradients are summed in another order, and
# AdamW turns that into ~1e-5 on the odd element of small gradient after 6 steps (1.06e-5
# at worst on an AMD EPYC); resuming adds nothing to it (2 -> 2 below is bit-exact).
TWO_RANKS = {"rtol": 1e-4, "atol": 1e-5}


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_ranks_match_one_process(
    single: Path, fsdp_straight: Path, tmp_path: Path, fsdp: bool
) -> None:
    if fsdp:
        root = fsdp_straight
    else:
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
        torch.testing.assert_close(w[k], r[k], **TWO_RANKS)
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


# -- sharded checkpoints under FSDP (train/sharded_checkpoint.py) ------------------------------


@pytest.fixture(scope="module")
def sharded(single: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 steps under FSDP on 2 ranks: a sharded checkpoint at step 3 (run pending)."""
    root = _copy_tokenized(single, tmp_path_factory.mktemp("sharded"), fsdp=True)
    _torchrun(root, "train", "--model", "micro", "--only-new", "--max-steps", "3", "--quiet")
    return root


def _state(step_dir: Path) -> dict:
    return json.loads((step_dir / "trainer_state.json").read_text())


def test_fsdp_writes_a_sharded_checkpoint_with_no_pickle(sharded: Path) -> None:
    (step,) = sorted((sharded / "checkpoints/micro").glob("step-*"))
    files = sorted(str(p.relative_to(step)) for p in step.rglob("*") if p.is_file())
    layout = _state(step)["layout"]
    assert layout["kind"] == "sharded" and layout["world_size"] == 2
    assert sorted(layout["files"]) == [f for f in files if f.endswith(".safetensors")]
    assert {f.split("/")[0] for f in layout["files"]} == {"model", "optimizer"}
    assert len([f for f in layout["files"] if f.startswith("model/")]) == 2  # one per rank
    # nothing but safetensors and JSON: no .metadata pickle, no optimizer.pt
    assert set(files) - set(layout["files"]) == {"trainer_state.json", "COMPLETE"}
    assert [g["params"][0] for g in layout["param_groups"]]  # the groups are JSON, by name
    assert not list((sharded / "checkpoints/micro").glob(".step-*"))  # no temporary left


@pytest.mark.parametrize("resume", ["1 process", "2 ranks"])
def test_a_sharded_checkpoint_resumes_at_any_world_size(
    single: Path, sharded: Path, fsdp_straight: Path, tmp_path: Path, resume: str
) -> None:
    """2 → 1 and 2 → 2: the finished run equals one process trained straight through
    (2 → 2: bit for bit the 2-rank run that never stopped)."""
    root = tmp_path / "run"
    shutil.copytree(sharded, root)
    if resume == "1 process":
        cli(root, "train", "--model", "micro", "--only-new", "--max-steps", "3", "--quiet")
    else:
        _torchrun(root, "train", "--model", "micro", "--only-new", "--max-steps", "3", "--quiet")
    ours, ref = _losses(root), _losses(single)
    assert len(ours) == len(ref) == int(STEPS)
    for a, b in zip(ours, ref):
        assert abs(a - b) < 1e-4 * max(1.0, abs(b))
    w, r = weights(root), weights(single)
    assert w.keys() == r.keys()
    for k in w:
        torch.testing.assert_close(w[k], r[k], **TWO_RANKS)
    if resume == "2 ranks":
        straight = weights(fsdp_straight)
        assert all(torch.equal(w[k], straight[k]) for k in w)


def test_a_single_file_checkpoint_resumes_under_fsdp(single: Path, tmp_path: Path) -> None:
    """1 → 2: rank 0 reads the files and broadcasts them; the result equals one process."""
    root = _copy_tokenized(single, tmp_path, fsdp=False)
    cli(root, "train", "--model", "micro", "--only-new", "--max-steps", "3", "--quiet")
    cfg = json.loads((root / "configs/micro.json").read_text())
    cfg["train"]["fsdp"] = True
    (root / "configs/micro.json").write_text(json.dumps(cfg))
    _torchrun(root, "train", "--model", "micro", "--only-new", "--max-steps", "3", "--quiet")
    w, r = weights(root), weights(single)
    for k in w:
        torch.testing.assert_close(w[k], r[k], **TWO_RANKS)
    (last,) = sorted((root / "checkpoints/micro").glob("step-*"))[-1:]
    assert _state(last)["layout"]["kind"] == "sharded"


def test_export_and_generate_read_a_sharded_checkpoint(sharded: Path, tmp_path: Path) -> None:
    root = tmp_path / "run"
    shutil.copytree(sharded, root)
    cli(root, "export", "--model", "micro", "--out", str(tmp_path / "hf"))
    from safetensors.torch import load_file

    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert exported and all(torch.isfinite(t).all() for t in exported.values())
    out = cli(root, "generate", "--model", "micro", "--prompt", "the", "--max-new-tokens", "4")
    assert out.returncode == 0


def test_pickles_planted_in_a_sharded_checkpoint_never_run(sharded: Path, tmp_path: Path) -> None:
    """torch's default DCP reader would unpickle a .metadata file; ours reads none."""
    import pickle

    root = tmp_path / "run"
    shutil.copytree(sharded, root)
    (step,) = sorted((root / "checkpoints/micro").glob("step-*"))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    for sub in ("model", "optimizer"):
        (step / sub / ".metadata").write_bytes(pickle.dumps(Evil()))
    cli(root, "train", "--model", "micro", "--only-new", "--max-steps", "1", "--quiet")
    cli(root, "export", "--model", "micro", "--out", str(tmp_path / "hf"))
    cli(root, "status", "--model", "micro")
    assert not marker.exists()


def test_a_damaged_shard_falls_back_and_an_unknown_layout_is_refused(
    sharded: Path, tmp_path: Path
) -> None:
    root = tmp_path / "run"
    shutil.copytree(sharded, root)
    ckpts = root / "checkpoints/micro"
    (step,) = sorted(ckpts.glob("step-*"))
    # a second, newer checkpoint whose rank-1 weights shard lost its tail
    newer = ckpts / "step-00000009"
    shutil.copytree(step, newer)
    state = _state(newer)
    state["step"] = 9
    (newer / "trainer_state.json").write_text(json.dumps(state))
    shard = sorted((newer / "model").glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-8])
    out = cli(root, "status", "--model", "micro", "--json")
    assert json.loads(out.stdout)["checkpoint"]["step"] == 3
    assert "corrupt" in out.stderr and "bytes" in out.stderr
    # a layout this allllm does not know: one line, never taken for corruption
    shutil.rmtree(newer)
    state = _state(step)
    state["layout"]["kind"] = "striped"
    (step / "trainer_state.json").write_text(json.dumps(state))
    proc = cli(root, "train", "--model", "micro", "--only-new", "--quiet", check=False)
    assert proc.returncode == 1
    assert "layout 'striped', written by a newer allllm" in proc.stderr
    assert "Traceback" not in proc.stderr
