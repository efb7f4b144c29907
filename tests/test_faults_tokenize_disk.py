"""The real CLI under faults: tokenize killed mid-file / mid-rename, full disks, tokenize beside train."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from train_helpers import add_raw, cli, make_workspace, weights

pytestmark = pytest.mark.slow


def _shards(root: Path) -> dict[str, str]:
    """stem -> shard_id of every complete shard (what status and train can take)."""
    out = {}
    for meta in sorted((root / "data").glob("*.meta.json")):
        out[meta.name.removesuffix(".meta.json")] = json.loads(meta.read_text())["shard_id"]
    return out


def _status(root: Path) -> dict:
    return json.loads(cli(root, "status", "--model", "micro", "--json").stdout)


def _visible_problems(root: Path) -> list[str]:
    """Shards a scan would report as broken: a fault must never leave one behind."""
    return [
        f"{s['name']}: {s['state']} {s.get('reason')}"
        for s in _status(root)["shards"]
        if s["state"] in ("invalid", "unverified")
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    root = make_workspace(tmp_path_factory.mktemp("ref"), n_files=3, words=4000)
    cli(root, "tokenize", "--model", "micro", "--quiet")
    return set(_shards(root).values())


@pytest.mark.parametrize(
    "fault",
    [
        "tokenize.journal:2",
        "tokenize.rows:5",
        "tokenize.renamed:2",
        "tokenize.docs:2",
        "tokenize.meta:1",
    ],
)
def test_tokenize_killed_then_rerun_equals_uninterrupted(
    tmp_path: Path, reference: set[str], fault: str
) -> None:
    root = make_workspace(tmp_path, n_files=3, words=4000)
    killed = cli(root, "tokenize", "--model", "micro", check=False, env={"ALLLLM_FAULT": fault})
    assert killed.returncode == -signal.SIGKILL
    assert _visible_problems(root) == []  # nothing partial is visible to status or train
    assert set(_shards(root).values()) <= reference
    rerun = cli(root, "tokenize", "--model", "micro", "--json")
    assert json.loads(rerun.stdout)["cleaned"] or fault == "tokenize.rows:5"
    assert set(_shards(root).values()) == reference
    assert not list((root / "data/.allllm/inflight").iterdir())
    assert not [
        p for p in (root / "data").iterdir() if p.name.startswith(".") and p.name != ".allllm"
    ]


def test_disk_full_during_tokenize_keeps_older_shards(tmp_path: Path) -> None:
    root = make_workspace(tmp_path, n_files=1, words=3000)
    cli(root, "tokenize", "--model", "micro", "--quiet")
    before = {p.name: p.read_bytes() for p in (root / "data").iterdir() if p.is_file()}
    add_raw(root, "more.txt", seed=5, words=3000)
    full = cli(
        root,
        "tokenize",
        "--model",
        "micro",
        check=False,
        env={"ALLLLM_FAULT": "tokenize.rows:1:enospc"},
    )
    assert full.returncode == 1
    assert (
        full.stderr.count("\n") == 1
        and "disk is full" in full.stderr
        and "Traceback" not in full.stderr
    )
    after = {p.name: p.read_bytes() for p in (root / "data").iterdir() if p.is_file()}
    assert after == before  # older shards untouched, nothing partial left
    assert _visible_problems(root) == []
    cli(root, "tokenize", "--model", "micro", "--quiet")  # room again: it finishes
    assert len(_shards(root)) == 2


def test_disk_full_during_checkpoint_save_keeps_the_previous_one(tmp_path: Path) -> None:
    root = make_workspace(tmp_path, n_files=1, words=3000)
    cli(root, "tokenize", "--model", "micro", "--quiet")
    cli(root, "train", "--model", "micro", "--only-new", "--max-steps", "4", "--quiet")
    good = weights(root)
    full = cli(
        root,
        "train", "--model", "micro", "--only-new", "--max-steps", "4",
        check=False,
        env={"ALLLLM_FAULT": "checkpoint.files:1:enospc"},
    )  # fmt: skip
    assert full.returncode == 1
    assert "disk is full" in full.stderr and "previous checkpoint is intact" in full.stderr
    assert "Traceback" not in full.stderr
    ckpts = sorted(
        p.name for p in (root / "checkpoints/micro").iterdir() if p.name.startswith("step-")
    )
    assert ckpts == ["step-00000004"]
    assert all(torch_equal(a, b) for a, b in zip(weights(root).values(), good.values()))
    cli(root, "train", "--model", "micro", "--only-new", "--quiet")  # usable next time


def torch_equal(a: object, b: object) -> bool:
    import torch

    return bool(torch.equal(a, b))  # type: ignore[arg-type]


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[bool]:
    path.mkdir(parents=True, exist_ok=True)
    ok = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", str(path)], capture_output=True)


def test_a_really_full_filesystem(tmp_path: Path) -> None:
    """A small tmpfs as data dir, where this machine allows mounting one."""
    root = make_workspace(tmp_path, n_files=1, words=200)
    with _tmpfs(root / "small", "256k") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root); ENOSPC injection covers this")
        cfg_path = root / "configs/micro.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["data"]["dir"] = "small"
        cfg_path.write_text(json.dumps(cfg))
        cli(root, "tokenize", "--model", "micro", "--quiet")
        before = {p.name: p.read_bytes() for p in (root / "small").iterdir() if p.is_file()}
        add_raw(root, "big.txt", seed=3, words=60000)  # ~400 KB of text: does not fit
        full = cli(root, "tokenize", "--model", "micro", check=False)
        assert full.returncode == 1 and "disk is full" in full.stderr
        after = {p.name: p.read_bytes() for p in (root / "small").iterdir() if p.is_file()}
        assert after == before


def test_tokenize_while_train_runs(tmp_path: Path) -> None:
    root = make_workspace(tmp_path, n_files=2, words=6000)
    cli(root, "tokenize", "--model", "micro", "--quiet")
    first = set(_shards(root).values())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALLLLM_DEBUG": ""}
    train = subprocess.Popen(
        [sys.executable, "-m", "allllm", "train", "--model", "micro", "--only-new", "--quiet"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    metrics = root / "checkpoints/micro/metrics.jsonl"
    deadline = time.monotonic() + 120
    while not metrics.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    add_raw(root, "late.txt", seed=11, words=3000)
    cli(root, "tokenize", "--model", "micro", "--quiet")  # writes a shard while train trains
    _, err = train.communicate(timeout=300)
    assert train.returncode == 0, err
    runs = [json.loads(x) for x in (root / "checkpoints/micro/runs.jsonl").read_text().splitlines()]
    assert set(runs[0]["shards"]) == first  # train took only what was complete when it planned
    states = {s["shard_id"]: s["state"] for s in _status(root)["shards"]}
    late = set(_shards(root).values()) - first
    assert len(late) == 1 and states[late.pop()] == "new"
