"""Training rules: checkpoints (rotation, fallback, disk full), pending runs, replay, epochs, schedules."""

from __future__ import annotations

import errno
import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch

from allllm.config import TrainConfig, load_config
from allllm.data.tokenize.run import tokenize
from allllm.errors import CheckpointError, DataError
from allllm.train import checkpoint as ckpt_io
from allllm.train.checkpoint import MARKER_FILE, latest_checkpoint, list_checkpoints
from allllm.train.options import QuietReporter, TrainOptions
from allllm.train.schedule import effective_warmup, lr_at
from allllm.train.session import train
from train_helpers import add_raw, make_workspace, same_weights, weights

CKPT = Path("checkpoints/micro")


@pytest.fixture()
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    return make_workspace(tmp_path)


def _train(**kw: object) -> tuple[object, QuietReporter]:
    reporter = QuietReporter()
    return train(load_config(model="micro"), TrainOptions(**kw), reporter), reporter  # type: ignore[arg-type]


def _edit_config(ws: Path, section: str, **values: object) -> None:
    path = ws / "configs/micro.json"
    data = json.loads(path.read_text())
    data[section].update(values)
    path.write_text(json.dumps(data))


def _seen(ws: Path) -> dict:
    return json.loads((ws / CKPT / "seen_datasets.json").read_text())["shards"]


# -- checkpoints -----------------------------------------------------------------------------------


def test_rotation_keeps_newest_and_the_pending_runs_start(ws: Path) -> None:
    tokenize(load_config(model="micro"))
    first, _ = _train(only_new=True)  # keep_checkpoints 2, checkpoint_every 4
    steps = [r.step for r in list_checkpoints(ws / CKPT)]
    assert len(steps) == 2 and steps[-1] == first.step
    add_raw(ws, "part2.txt", seed=2)
    tokenize(load_config(model="micro"))
    _train(only_new=True, max_steps=9)  # a pending run with several checkpoints
    steps = [r.step for r in list_checkpoints(ws / CKPT)]
    assert first.step in steps  # where the pending run started: protected
    assert steps[-1] == first.step + 9
    assert all(r.complete for r in list_checkpoints(ws / CKPT))


def test_incomplete_and_corrupt_checkpoints_fall_back(ws: Path) -> None:
    tokenize(load_config(model="micro"))
    _train(only_new=True, max_steps=5)  # checkpoints at 4 and 5
    (ws / CKPT / "step-00000005" / MARKER_FILE).unlink()  # killed before the marker
    result, rep = _train(only_new=True, max_steps=1)
    assert any("incomplete" in w for w in rep.warnings)
    assert result.step == 5  # resumed from 4, trained one step
    (ws / CKPT / "step-00000005" / "model.safetensors").write_bytes(b"garbage")
    result, rep = _train(only_new=True, max_steps=1)
    assert any("corrupt" in w for w in rep.warnings)
    assert result.step == 5


def test_disk_full_while_saving_keeps_the_previous_checkpoint(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenize(load_config(model="micro"))
    _train(only_new=True, max_steps=4)
    before = weights(ws)
    real_save = ckpt_io.save_checkpoint.__globals__["_fsync_file"]

    def full(path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(ckpt_io.save_checkpoint.__globals__, "_fsync_file", full)
    with pytest.raises(CheckpointError, match="disk is full"):
        _train(only_new=True, max_steps=2)
    monkeypatch.setitem(ckpt_io.save_checkpoint.__globals__, "_fsync_file", real_save)
    assert [r.step for r in list_checkpoints(ws / CKPT)] == [4]
    assert not [p for p in (ws / CKPT).iterdir() if p.name.startswith(".step-")]
    assert same_weights(weights(ws), before)
    result, _ = _train(only_new=True)  # usable next time
    assert result.status == "trained"


def test_from_checkpoint_sets_newer_ones_aside(ws: Path) -> None:
    tokenize(load_config(model="micro"))
    _train(only_new=True, max_steps=8)  # 4, 8
    result, rep = _train(only_new=True, max_steps=1, from_checkpoint=ws / CKPT / "step-00000004")
    assert result.step == 5
    assert any("moved aside" in w for w in rep.warnings)
    names = sorted(p.name for p in (ws / CKPT).iterdir() if p.name.startswith("step-"))
    assert names[-1].startswith("step-00000008.abandoned-")
    assert latest_checkpoint(ws / CKPT).step == 5
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        _train(from_checkpoint=ws / "nowhere")


def test_reset_optimizer_changes_the_update(
    ws: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenize(load_config(model="micro"))
    _train(only_new=True, max_steps=4)
    copy = tmp_path_factory.mktemp("copy")
    shutil.copytree(ws, copy, dirs_exist_ok=True)
    _train(only_new=True, max_steps=1)
    kept = weights(ws)
    monkeypatch.chdir(copy)
    _, rep = _train(only_new=True, max_steps=1, reset_optimizer=True)
    assert any("fresh optimizer" in w for w in rep.warnings)
    assert not same_weights(weights(copy), kept)


# -- pending runs ----------------------------------------------------------------------------------


def test_pending_run_is_finished_first_then_new_shards(ws: Path) -> None:
    tokenize(load_config(model="micro"))
    _part, _ = _train(only_new=True, max_steps=2)
    add_raw(ws, "part2.txt", seed=2)
    tokenize(load_config(model="micro"))
    result, _rep = _train(only_new=True)
    assert len(result.runs) == 2  # the pending run, then the new shard
    assert len(result.runs[0]["shards"]) == 2 and len(result.runs[1]["shards"]) == 1
    assert result.runs[1]["start_step"] == result.runs[0]["end_step"]
    assert len(_seen(ws)) == 3


def test_deleted_shard_is_missing_and_pending_run_says_abandon(ws: Path) -> None:
    from allllm.train.checkpoint import checkpoint_summary
    from allllm.use.status import build_status

    tokenize(load_config(model="micro"))
    _train(only_new=True, max_steps=2)
    for f in (ws / "data").glob("part1.cached.*"):
        f.unlink()
    with pytest.raises(DataError, match="--abandon-pending"):
        _train(only_new=True)
    result, rep = _train(only_new=True, abandon_pending=True)
    assert any("dropping pending run" in w for w in rep.warnings)
    assert result.runs[0]["start_step"] == 0  # back to where the dropped run started
    assert len(result.runs[0]["shards"]) == 1
    for f in (ws / "data").glob("part0.cached.*"):
        f.unlink()
    cfg = load_config(model="micro")
    report = build_status(cfg, checkpoint=checkpoint_summary(cfg.checkpoint_path))
    assert [s["state"] for s in report["shards"]] == ["missing"]


def test_abandoning_with_nothing_left_to_train_still_sets_the_run_aside(ws: Path) -> None:
    """--abandon-pending when no shard is left to train: the dropped run's checkpoints move
    aside, so the next `train` starts from the run's start point instead of its leftovers."""
    tokenize(load_config(model="micro"))
    done, _ = _train(only_new=True)
    add_raw(ws, "part2.txt", seed=2)
    tokenize(load_config(model="micro"))
    _train(only_new=True, max_steps=1)
    for f in (ws / "data").glob("part2.cached.*"):
        f.unlink()
    result, rep = _train(only_new=True, abandon_pending=True)
    assert result.status == "nothing" and result.step == done.step
    assert any("moved aside" in w for w in rep.warnings)
    assert latest_checkpoint(ws / CKPT).step == done.step
    again, _ = _train(only_new=True)  # no pending run left to complain about
    assert again.status == "nothing" and again.step == done.step


def test_seen_file_deleted_or_corrupt_is_rebuilt_from_checkpoint(ws: Path) -> None:
    tokenize(load_config(model="micro"))
    _first, _ = _train(only_new=True)
    records = _seen(ws)
    (ws / CKPT / "seen_datasets.json").unlink()
    again, _ = _train(only_new=True)
    assert again.status == "nothing"  # nothing retrained
    assert _seen(ws) == records
    (ws / CKPT / "seen_datasets.json").write_text('{"format_version": 1, "shards": {"x": 1')
    again, rep = _train(only_new=True)
    assert again.status == "nothing"
    assert _seen(ws) == records
    assert list((ws / CKPT).glob("seen_datasets.json.corrupt-*"))
    assert any("rebuilt" in w for w in rep.warnings)


# -- what a run trains ----------------------------------------------------------------------------


def test_replay_rows_come_from_seen_shards_and_are_not_recorded(ws: Path) -> None:
    tokenize(load_config(model="micro"))
    _train(only_new=True)
    before = _seen(ws)
    _edit_config(ws, "train", replay_fraction=0.5)
    add_raw(ws, "part2.txt", seed=2)
    tokenize(load_config(model="micro"))
    result, _ = _train(only_new=True, dry_run=True)
    plan = result.plan["new"]
    new_rows = sum(plan["shard_rows"].values())
    replay = sum(len(r) for r in plan["replay"].values())
    assert replay == new_rows  # n·r/(1−r) with r = 0.5
    assert set(plan["replay"]) <= set(before)
    result, _ = _train(only_new=True)
    after = _seen(ws)
    assert {k: after[k] for k in before} == before  # replayed shards keep their records


def test_epochs_multiply_steps(ws: Path) -> None:
    tokenize(load_config(model="micro"))
    one, _ = _train(only_new=True, dry_run=True)
    _edit_config(ws, "train", epochs=2)
    two, _ = _train(only_new=True, dry_run=True)
    assert two.plan["new"]["total_steps"] == 2 * one.plan["new"]["total_steps"]


def test_gradient_accumulation_does_not_change_the_update(
    ws: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenize(load_config(model="micro"))
    _train(only_new=True, max_steps=2)
    a = weights(ws)
    other = make_workspace(tmp_path_factory.mktemp("acc"))
    monkeypatch.chdir(other)
    _edit_config(other, "train", micro_batch_size=1)
    tokenize(load_config(model="micro"))
    _train(only_new=True, max_steps=2)
    b = weights(other)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_invalid_shards_are_listed_and_skipped(ws: Path) -> None:
    tokenize(load_config(model="micro"))
    meta = next((ws / "data").glob("part0.*.meta.json"))
    data = json.loads(meta.read_text())
    data["seq_len"] = 64
    meta.write_text(json.dumps(data))
    result, rep = _train(only_new=True)
    assert len(result.runs[0]["shards"]) == 1
    assert any("skipping part0" in w and "invalid" in w for w in rep.warnings)


# -- schedules -------------------------------------------------------------------------------------


def test_schedules() -> None:
    cos = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10)
    assert effective_warmup(10, 50) == 5  # clamped to 10% of a short run
    lrs = [lr_at(s, 200, cos) for s in range(200)]
    assert lrs[0] < lrs[9] <= 1.0 and abs(lrs[10] - 1.0) < 1e-9
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert abs(lrs[-1] - 0.1) < 1e-3
    wsd = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=0, schedule="wsd", decay_fraction=0.25)
    w = [lr_at(s, 100, wsd) for s in range(100)]
    assert w[0] == 1.0 and w[74] == 1.0 and w[76] < 1.0 and w[-1] == 0.0
    const = TrainConfig(lr=0.5, warmup_steps=0, schedule="constant")
    assert {lr_at(s, 10, const) for s in range(10)} == {0.5}
