"""A rank-0 failure reaches every rank: two gloo processes, where rank 0 raises and rank 1 must
stop with a clear error instead of waiting in a collective; the group's timeout setting."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from allllm.errors import CheckpointError, ConfigError, DataError
from allllm.train import distributed
from allllm.train.distributed import (
    DistInfo,
    Rank0Failed,
    dist_timeout,
    process_group,
    run_on_rank0,
)

GROUP_TIMEOUT_S = "40"  # a regression fails in the group well before the guard below
GUARD_S = 150.0  # the test fails (never hangs) if the ranks are not done by then


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _outcome(fn: Callable[[], Any]) -> dict[str, Any]:
    try:
        return {"value": fn()}
    except BaseException as exc:  # the test compares what each rank raised
        return {"raised": type(exc).__name__, "message": str(exc)}


def _boom() -> None:
    raise RuntimeError("boom\nsecond line")


def _user_error() -> None:
    raise DataError("shard x is invalid", "restore it")


def _full_disk_save(root: str) -> None:
    from allllm.train.checkpoint import save_checkpoint
    from allllm.train.state import TrainState

    os.environ["ALLLLM_FAULT"] = "checkpoint.files:1:enospc"
    state = TrainState()
    save_checkpoint(
        Path(root) / "ckpt",
        state.step,
        model_state={"w": torch.zeros(2)},
        optimizer_state={},
        train_state=state,
    )


def _rank(rank: int, port: int, out: str, scenario: str) -> None:
    """One rank of the job: its outcomes go to ``out/rank<r>.json``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank))
    os.environ[distributed.TIMEOUT_ENV] = GROUP_TIMEOUT_S
    os.environ.pop("ALLLLM_FAULT", None)
    torch.set_num_threads(1)
    info = DistInfo(rank=rank, world_size=2)
    seen: dict[str, Any] = {}
    real_init = dist.init_process_group

    def recording_init(*args: Any, **kwargs: Any) -> None:
        seen["timeout_s"] = kwargs["timeout"].total_seconds()
        real_init(*args, **kwargs)

    dist.init_process_group = recording_init
    report: dict[str, Any] = {}

    def job() -> None:
        with process_group(info, torch.device("cpu")):
            if scenario == "run_on_rank0":
                report["boom"] = _outcome(lambda: run_on_rank0(info, _boom))
                report["user"] = _outcome(lambda: run_on_rank0(info, _user_error))
                report["value"] = _outcome(lambda: run_on_rank0(info, lambda: [1, "two"]))
                report["save"] = _outcome(lambda: run_on_rank0(info, lambda: _full_disk_save(out)))
            elif rank == 0:  # the last checkpoint fails on rank 0 alone; rank 1 is at the exit
                _full_disk_save(out)

    report["exit"] = _outcome(job)
    report["init_timeout_s"] = seen.get("timeout_s")
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


def _spawn(tmp_path: Path, scenario: str) -> list[dict[str, Any]]:
    ctx = mp.spawn(_rank, args=(_free_port(), str(tmp_path), scenario), nprocs=2, join=False)
    deadline = time.monotonic() + GUARD_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the ranks of {scenario!r} still run after {GUARD_S:.0f} s: a hang")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_a_rank0_exception_of_any_kind_reaches_every_rank(tmp_path: Path) -> None:
    rank0, rank1 = _spawn(tmp_path, "run_on_rank0")
    assert rank0["boom"] == {"raised": "RuntimeError", "message": "boom\nsecond line"}
    assert rank1["boom"]["raised"] == "Rank0Failed"
    assert rank1["boom"]["message"].startswith("rank 0 failed: RuntimeError: boom second line")
    assert "\n" not in rank1["boom"]["message"]
    for report in (rank0, rank1):  # user errors as before; the group still works after both
        assert report["user"] == {
            "raised": "DataError",
            "message": "shard x is invalid — restore it",
        }
        assert report["value"] == {"value": [1, "two"]}
        assert report["save"]["raised"] == "CheckpointError"
        assert "the disk is full" in report["save"]["message"]
        assert report["exit"] == {"value": None}
        assert report["init_timeout_s"] == float(GROUP_TIMEOUT_S)


def test_a_failed_last_save_on_rank0_stops_the_rank_waiting_at_the_exit(tmp_path: Path) -> None:
    rank0, rank1 = _spawn(tmp_path, "exit")
    assert rank0["exit"]["raised"] == "CheckpointError"
    assert rank1["exit"]["raised"] == "Rank0Failed"
    message = rank1["exit"]["message"]
    assert message.startswith("rank 0 failed: CheckpointError: cannot save checkpoint")
    assert "the disk is full" in message and "\n" not in message


def test_the_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert dist_timeout() == timedelta(seconds=3600)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "7200.5")
    assert dist_timeout() == timedelta(seconds=7200.5)
    for bad in ("soon", "0", "-5", "nan", "inf"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(ConfigError) as err:
            dist_timeout()
        assert distributed.TIMEOUT_ENV in str(err.value) and "\n" not in str(err.value)


def test_rank0_failed_is_a_user_facing_one_line_error() -> None:
    assert issubclass(Rank0Failed, distributed.TrainingError)
    assert not issubclass(Rank0Failed, (CheckpointError, DataError))
    one_rank = DistInfo()
    with pytest.raises(RuntimeError, match="boom"):  # a single process: its own error, as is
        run_on_rank0(one_rank, _boom)
