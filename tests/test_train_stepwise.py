"""The step-wise flow: train --only-new, add data, train only the new shard; bounds; resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from allllm.config import load_config
from allllm.data.tokenize.run import tokenize
from allllm.errors import CheckpointError, LockError
from allllm.train.checkpoint import latest_checkpoint, list_checkpoints
from allllm.train.lock import checkpoint_dir_lock
from allllm.train.options import QuietReporter, TrainOptions
from allllm.train.session import train
from train_helpers import add_raw, make_workspace, same_weights, weights


@pytest.fixture()
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    return make_workspace(tmp_path)


def _train(**kw: object) -> tuple[object, QuietReporter]:
    reporter = QuietReporter()
    result = train(load_config(model="micro"), TrainOptions(**kw), reporter)  # type: ignore[arg-type]
    return result, reporter


def _seen(ws: Path) -> dict:
    return json.loads((ws / "checkpoints/micro/seen_datasets.json").read_text())["shards"]


def test_only_new_trains_just_the_new_shard(ws: Path) -> None:
    tokenize(load_config(model="micro"))
    first, _ = _train(only_new=True)
    assert first.status == "trained" and first.exit_code == 0
    seen1 = _seen(ws)
    assert len(seen1) == 2
    step1 = first.step
    assert all(r["step"] == step1 for r in seen1.values())

    add_raw(ws, "part2.txt", seed=2)
    summary = tokenize(load_config(model="micro"))
    assert len(summary.shards) == 1 and len(summary.up_to_date) == 2
    new_id = summary.shards[0].shard_id
    second, rep = _train(only_new=True)
    assert second.status == "trained"
    assert second.runs[0]["shards"] == [new_id]  # only the new shard
    assert second.runs[0]["start_step"] == step1  # the checkpoint continued
    assert second.step > step1
    seen2 = _seen(ws)
    assert set(seen2) == set(seen1) | {new_id}
    assert {k: v for k, v in seen2.items() if k in seen1} == seen1  # old records untouched
    runs = [json.loads(x) for x in (ws / "checkpoints/micro/runs.jsonl").read_text().splitlines()]
    assert [r["shards"] for r in runs] == [sorted(seen1), [new_id]]

    third, rep = _train(only_new=True)
    assert third.status == "nothing" and third.exit_code == 0
    assert any("nothing new to train" in m for m in rep.messages)
    assert third.step == second.step


def test_without_only_new_retrains_seen_with_a_notice(ws: Path) -> None:
    tokenize(load_config(model="micro"))
    _train(only_new=True)
    result, rep = _train()
    assert result.status == "trained"
    assert any("trained again" in w for w in rep.warnings)
    assert len(result.runs[0]["shards"]) == 2


def test_shards_glob_chooses(ws: Path) -> None:
    tokenize(load_config(model="micro"))
    result, _ = _train(only_new=True, shards="part1.*")
    assert result.status == "trained"
    assert len(result.runs[0]["shards"]) == 1
    assert "part1" in next(iter(result.runs[0]["shard_files"].values()))["jsonl"]


def test_no_shards_says_so(ws: Path) -> None:
    result, rep = _train(only_new=True)
    assert result.status == "nothing" and result.exit_code == 0
    assert any("allllm tokenize" in m for m in rep.messages)


def test_bounded_run_resumes_to_identical_weights(
    ws: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # uninterrupted reference in a second workspace with the same text
    ref_ws = make_workspace(tmp_path_factory.mktemp("ref"))
    monkeypatch.chdir(ref_ws)
    tokenize(load_config(model="micro"))
    full, _ = _train(only_new=True)
    ref_weights = weights(ref_ws)

    monkeypatch.chdir(ws)
    tokenize(load_config(model="micro"))
    part, _ = _train(only_new=True, max_steps=3)
    assert part.status == "bounded" and part.exit_code == 0 and part.step == 3
    assert latest_checkpoint(ws / "checkpoints/micro").step == 3  # exactly there
    assert not (ws / "checkpoints/micro/seen_datasets.json").exists() or not _seen(ws)
    part2, _ = _train(only_new=True, max_tokens=1)  # one more step, then stop
    assert part2.step == 4 and part2.status == "bounded"
    rest, _ = _train(only_new=True)
    assert rest.status == "trained" and rest.step == full.step
    assert same_weights(weights(ws), ref_weights)
    assert (
        _seen(ws).keys()
        == json.loads((ref_ws / "checkpoints/micro/seen_datasets.json").read_text())[
            "shards"
        ].keys()
    )


def test_dry_run_trains_and_writes_nothing(ws: Path) -> None:
    tokenize(load_config(model="micro"))
    result, _ = _train(only_new=True, dry_run=True)
    assert result.status == "dry-run"
    plan = result.plan
    assert plan["new"]["total_steps"] > 0 and plan["pending"] is None
    est = plan["estimate"]
    assert est["seconds_per_step"] > 0 and est["peak_bytes"] > 0 and est["parameters"] > 0
    assert not list_checkpoints(ws / "checkpoints/micro")
    assert not (ws / "checkpoints/micro/metrics.jsonl").exists()


def test_dry_run_with_pending_run(ws: Path) -> None:
    tokenize(load_config(model="micro"))
    _train(only_new=True, max_steps=2)
    add_raw(ws, "part2.txt", seed=2)
    tokenize(load_config(model="micro"))
    result, _ = _train(only_new=True, dry_run=True)
    assert result.plan["pending"]["steps_done"] == 2
    assert len(result.plan["new"]["shard_ids"]) == 1  # only the shard the pending run lacks
    assert latest_checkpoint(ws / "checkpoints/micro").step == 2


def test_second_trainer_is_refused(ws: Path) -> None:
    tokenize(load_config(model="micro"))
    with checkpoint_dir_lock(ws / "checkpoints/micro"), pytest.raises(LockError, match="another"):
        _train(only_new=True)


def test_architecture_change_is_refused(ws: Path) -> None:
    tokenize(load_config(model="micro"))
    _train(only_new=True, max_steps=1)
    cfg_path = ws / "configs/micro.json"
    data = json.loads(cfg_path.read_text())
    data["model"]["num_layers"] = 3
    cfg_path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="num_layers: checkpoint 2, config 3"):
        _train(only_new=True)


def test_training_settings_may_change_between_runs(ws: Path) -> None:
    tokenize(load_config(model="micro"))
    _train(only_new=True, max_steps=1)
    cfg_path = ws / "configs/micro.json"
    data = json.loads(cfg_path.read_text())
    data["train"]["lr"] = 0.001
    cfg_path.write_text(json.dumps(data))
    result, rep = _train(only_new=True)
    assert result.status == "trained"
    assert any("pending run keeps its own setting — lr" in w for w in rep.warnings)


def test_metrics_and_status_after_training(ws: Path) -> None:
    from allllm.train.checkpoint import checkpoint_summary
    from allllm.use.status import build_status

    tokenize(load_config(model="micro"))
    result, _ = _train(only_new=True)
    lines = [
        json.loads(x) for x in (ws / "checkpoints/micro/metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in lines] == list(range(1, result.step + 1))
    for key in ("step", "tokens", "loss", "lr", "time"):
        assert key in lines[0]
    assert "val_loss" in lines[-1]
    assert lines[-1]["loss"] < lines[0]["loss"]
    cfg = load_config(model="micro")
    report = build_status(cfg, checkpoint=checkpoint_summary(cfg.checkpoint_path))
    assert {s["state"] for s in report["shards"]} == {"seen"}
    assert report["checkpoint"]["step"] == result.step
    assert report["checkpoint"]["pending_run"] is None
