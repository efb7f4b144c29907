"""What happens at the boundary between two step-wise runs (docs/design.md: a training run).

- the optimizer takes betas, eps and weight decay from the new run's config (a pending
  run finishes with its own);
- a shard's validation split is pinned when it is first trained: replay, eval and
  status use the stored seed and fraction, never the current config's;
- a step with a non-finite loss or gradient is skipped on every rank, counted, and too
  many in a row stop the run with one line and nothing recorded;
- every run warms up (never starts at peak LR), however short.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from allllm.config import load_config
from allllm.data.registry import ScanSpec, TokenizerIdentity, scan_shards
from allllm.data.seen import SeenMap
from allllm.data.tokenize.run import tokenize
from allllm.data.valsplit import split_rows
from allllm.errors import TrainingError
from allllm.train import checkpoint as ckpt_io
from allllm.train.checkpoint import latest_checkpoint, list_checkpoints
from allllm.train.options import QuietReporter, TrainOptions
from allllm.train.schedule import effective_warmup
from allllm.train.session import train
from allllm.train.state_dicts import non_finite_weights
from allllm.use.evaluate import select_rows
from allllm.use.status import build_status
from allllm.util import faults
from cli_helpers import run_cli
from train_helpers import add_raw, make_workspace

CKPT = Path("checkpoints/micro")


@pytest.fixture()
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    return make_workspace(tmp_path, n_files=1, words=1500)


def _edit(ws: Path, section: str, **values: object) -> None:
    path = ws / "configs/micro.json"
    data = json.loads(path.read_text())
    data[section].update(values)
    path.write_text(json.dumps(data))


def _train(**kw: object) -> tuple[object, QuietReporter]:
    reporter = QuietReporter()
    return train(load_config(model="micro"), TrainOptions(**kw), reporter), reporter  # type: ignore[arg-type]


def _new_shard(ws: Path, name: str, seed: int, words: int = 1500) -> None:
    add_raw(ws, name, seed=seed, words=words)
    tokenize(load_config(model="micro"))


def _seen(ws: Path) -> dict:
    return json.loads((ws / CKPT / "seen_datasets.json").read_text())["shards"]


def _groups(step: int | None = None) -> list[dict]:
    refs = list_checkpoints(CKPT)
    ref = refs[-1] if step is None else next(r for r in refs if r.step == step)
    return ckpt_io.load_optimizer_state(ref)["param_groups"]


# -- the validation split is pinned per shard ---------------------------------------------------


def test_a_seed_change_never_trains_or_scores_the_wrong_rows(ws: Path) -> None:
    _edit(ws, "train", seed=1)
    _edit(ws, "data", val_fraction=0.2)
    tokenize(load_config(model="micro"))
    _train(only_new=True)
    (a,) = _seen(ws)
    _edit(ws, "train", seed=2, replay_fraction=0.5)
    _edit(ws, "data", val_fraction=0.5)
    _new_shard(ws, "part1.txt", seed=11)
    _train(only_new=True)
    records = _seen(ws)
    (b,) = set(records) - {a}
    assert (records[a]["val_seed"], records[a]["val_fraction"]) == (1, 0.2)
    assert (records[b]["val_seed"], records[b]["val_fraction"]) == (2, 0.5)
    state = latest_checkpoint(CKPT).read_state()  # type: ignore[union-attr]
    run = state.run
    assert run is not None and run.replay[a], "the second run replays rows of A"
    n_a = _rows_of(a)
    val_a = set(split_rows(1, a, n_a, 0.2)[1].tolist())
    assert val_a and not val_a & set(run.replay[a])  # no held-out row of A was replayed
    assert run.split_of(a) == (1, 0.2) and run.split_of(b) == (2, 0.5)
    # the checkpoint's own seen map carries the same pinned values
    assert (state.seen[a]["val_seed"], state.seen[a]["val_fraction"]) == (1, 0.2)
    # eval scores exactly the held-out rows of each shard
    cfg = load_config(model="micro")
    scan = _scan(cfg, state.seen)
    parts = {p.entry.shard_id: p.rows.tolist() for p in select_rows(cfg, scan, state)}
    assert parts[a] == sorted(val_a)
    assert parts[b] == split_rows(2, b, _rows_of(b), 0.5)[1].tolist()
    # status counts the pinned split too
    report = build_status(cfg)
    by_id = {s["shard_id"]: s for s in report["shards"]}
    assert by_id[a]["val_rows"] == len(val_a)
    assert by_id[a]["train_rows"] == n_a - len(val_a) == records[a]["rows"]


def test_a_retrained_seen_shard_keeps_its_split(ws: Path) -> None:
    _edit(ws, "train", seed=1)
    tokenize(load_config(model="micro"))
    _train(only_new=True)
    (a,) = _seen(ws)
    _edit(ws, "train", seed=5)
    _edit(ws, "data", val_fraction=0.3)
    _train()  # no --only-new: the seen shard is trained again
    state = latest_checkpoint(CKPT).read_state()  # type: ignore[union-attr]
    assert state.run is not None and state.run.split_of(a) == (1, 0.05)
    assert state.run.shard_rows[a] == _rows_of(a) - split_rows(1, a, _rows_of(a), 0.05)[1].size
    assert (_seen(ws)[a]["val_seed"], _seen(ws)[a]["val_fraction"]) == (1, 0.05)


def _rows_of(shard_id: str) -> int:
    for meta in Path("data").glob("*.meta.json"):
        data = json.loads(meta.read_text())
        if data["shard_id"] == shard_id:
            return int(data["n_rows"])
    raise AssertionError(f"no meta for {shard_id}")


def _scan(cfg, seen: dict):  # type: ignore[no-untyped-def]
    ident = TokenizerIdentity(cfg.tokenizer.backend, cfg.tokenizer.path, None)
    return scan_shards(cfg.data_dir, ScanSpec.from_config(cfg, ident), SeenMap.from_dict(seen))


# -- optimizer hyper-parameters come from the new run's config --------------------------------


def test_new_runs_take_the_configs_optimizer_settings_and_pending_runs_their_own(
    ws: Path,
) -> None:
    _edit(ws, "train", weight_decay=0.1, betas=[0.9, 0.95])
    tokenize(load_config(model="micro"))
    _train(only_new=True)
    assert _groups()[0]["weight_decay"] == 0.1 and tuple(_groups()[0]["betas"]) == (0.9, 0.95)
    _edit(ws, "train", weight_decay=0.0, betas=[0.8, 0.99], adam_eps=1e-6)
    _new_shard(ws, "part1.txt", seed=11)
    dry, _ = _train(only_new=True, dry_run=True)
    assert "train.weight_decay 0.1 → 0" in dry.plan["optimizer_changes"]  # type: ignore[attr-defined]
    _, reporter = _train(only_new=True)
    decay, no_decay = _groups()
    assert decay["weight_decay"] == 0.0 and tuple(decay["betas"]) == (0.8, 0.99)
    assert decay["eps"] == 1e-6 and no_decay["weight_decay"] == 0.0
    assert tuple(no_decay["betas"]) == (0.8, 0.99)
    said = " ".join(reporter.messages)
    assert "train.weight_decay 0.1 → 0" in said and "train.betas [0.9, 0.95] → [0.8, 0.99]" in said
    # a third run stops pending; the config changes again; the run finishes with its own values
    _edit(ws, "train", weight_decay=0.05)
    _new_shard(ws, "part2.txt", seed=12)
    result, _ = _train(only_new=True, max_steps=1)
    assert result.status == "bounded"  # type: ignore[attr-defined]
    _edit(ws, "train", weight_decay=0.2, betas=[0.7, 0.9])
    result, reporter = _train(only_new=True)
    assert result.status == "trained"  # type: ignore[attr-defined]
    assert _groups()[0]["weight_decay"] == 0.05 and tuple(_groups()[0]["betas"]) == (0.8, 0.99)
    assert any("pending run keeps its own setting — weight_decay" in w for w in reporter.warnings)


# -- non-finite steps ----------------------------------------------------------------------------


def _metrics(ws: Path) -> list[dict]:
    return [json.loads(x) for x in (ws / CKPT / "metrics.jsonl").read_text().splitlines()]


def test_one_nan_gradient_is_skipped_counted_and_training_goes_on(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenize(load_config(model="micro"))
    monkeypatch.setenv("ALLLLM_FAULT", "train.grad:3:nan")
    monkeypatch.setattr(faults, "_counts", {})
    result, _ = _train(only_new=True)
    assert result.status == "trained"  # type: ignore[attr-defined]
    lines = _metrics(ws)
    assert [r["step"] for r in lines if r["skipped"]] == [3]
    assert all(not r["skipped"] for r in lines if r["step"] != 3)
    assert len(lines) == result.runs[0]["steps"]  # type: ignore[attr-defined]  # batch consumed
    run = json.loads((ws / CKPT / "runs.jsonl").read_text().splitlines()[-1])
    assert run["skipped_steps"] == 1
    ref = latest_checkpoint(CKPT)
    assert ref is not None and not non_finite_weights(ckpt_io.load_model_state(ref))


def test_nan_on_every_step_stops_with_one_line_and_records_nothing(
    ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenize(load_config(model="micro"))
    _train(only_new=True)
    _new_shard(ws, "part1.txt", seed=11)
    before = {
        "checkpoints": [r.step for r in list_checkpoints(CKPT)],
        "seen": (ws / CKPT / "seen_datasets.json").read_bytes(),
        "runs": (ws / CKPT / "runs.jsonl").read_bytes(),
    }
    monkeypatch.setenv("ALLLLM_FAULT", "train.grad:1:nan-every")
    monkeypatch.setattr(faults, "_counts", {})
    code, _out, err = run_cli(["train", "--model", "micro", "--only-new", "--quiet"], capsys)
    lines = err.splitlines()
    assert code == 1 and "Traceback" not in err
    assert lines[0].startswith("warning: step") and "skipped" in lines[0]  # once a streak
    assert len(lines) == 2 and lines[1].startswith("error: ")
    assert "5 optimizer steps in a row" in lines[1] and "max_skipped_steps" in lines[1]
    after = {
        "checkpoints": [r.step for r in list_checkpoints(CKPT)],
        "seen": (ws / CKPT / "seen_datasets.json").read_bytes(),
        "runs": (ws / CKPT / "runs.jsonl").read_bytes(),
    }
    assert after == before
    ref = latest_checkpoint(CKPT)
    assert ref is not None and not non_finite_weights(ckpt_io.load_model_state(ref))
    skipped = [r for r in _metrics(ws) if r["skipped"]]
    assert len(skipped) == 5 and all(r["loss"] is None or math.isfinite(r["loss"]) for r in skipped)


def test_max_skipped_steps_zero_never_stops(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _edit(ws, "train", max_skipped_steps=0)
    tokenize(load_config(model="micro"))
    monkeypatch.setenv("ALLLLM_FAULT", "train.grad:1:nan-every")
    monkeypatch.setattr(faults, "_counts", {})
    result, _ = _train(only_new=True)
    assert result.status == "trained"  # type: ignore[attr-defined]
    steps = result.runs[0]["steps"]  # type: ignore[attr-defined]
    run = json.loads((ws / CKPT / "runs.jsonl").read_text().splitlines()[-1])
    assert run["skipped_steps"] == steps


def test_weights_that_are_not_finite_are_named() -> None:
    good = {"a": torch.ones(2), "ids": torch.tensor([1, 2])}
    assert non_finite_weights(good) == ""
    bad = {**good, "b": torch.tensor([1.0, float("inf")]), "c": torch.tensor([float("nan")])}
    assert non_finite_weights(bad) == "b, c"


def test_a_save_refuses_non_finite_weights(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An update that overflows (not a skipped step) must never become a checkpoint."""
    from allllm.train import saving

    tokenize(load_config(model="micro"))
    real = saving.model_state

    def poisoned(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        weights = real(model)
        key = next(iter(weights))
        weights[key] = weights[key].clone().fill_(float("nan"))
        return weights

    monkeypatch.setattr(saving, "model_state", poisoned)
    with pytest.raises(TrainingError, match="weights are not finite"):
        _train(only_new=True)
    assert not list_checkpoints(CKPT)
    assert not (ws / CKPT / "seen_datasets.json").exists()


# -- warm-up ---------------------------------------------------------------------------------------


def test_warmup_rule() -> None:
    assert effective_warmup(100, 5) == 1  # ceil(0.5) -> at least one step
    assert effective_warmup(100, 50) == 5 and effective_warmup(3, 50) == 3
    assert effective_warmup(100, 11) == 2  # rounded up
    assert effective_warmup(0, 5) == 0  # warmup_steps 0 still means none


def test_a_five_step_run_starts_below_peak_lr(ws: Path) -> None:
    tokenize(load_config(model="micro"))
    train_rows = build_status(load_config(model="micro"))["totals"]["new_rows"]
    batch = -(-train_rows // 5)
    _edit(ws, "train", warmup_steps=100, lr=0.003, batch_size=batch, micro_batch_size=batch)
    result, _ = _train(only_new=True)
    assert result.runs[0]["steps"] == 5  # type: ignore[attr-defined]
    lrs = [r["lr"] for r in _metrics(ws)]
    assert lrs[0] < 0.003 and max(lrs) <= 0.003


def test_a_dry_run_with_nothing_to_train_builds_no_model(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline with phi-2 this cost ~40 s of building 2.7B weights for "nothing to train"."""
    import allllm.train.session as session

    tokenize(load_config(model="micro"))
    _train(only_new=True)

    def no_model(*_a: object) -> None:
        raise AssertionError("a model was built")

    monkeypatch.setattr(session, "prepare_model", no_model)
    result, reporter = _train(only_new=True, dry_run=True)
    assert result.status == "dry-run" and result.plan["new"] is None  # type: ignore[attr-defined]
    assert any("nothing new to train" in m for m in reporter.messages)


# -- train.keep_run_checkpoints -------------------------------------------------------------------


@pytest.mark.parametrize("keep_runs", [2, "all"])
def test_the_end_of_each_run_is_kept_beside_the_rotating_checkpoints(
    ws: Path, keep_runs: int | str
) -> None:
    _edit(ws, "train", keep_checkpoints=1, keep_run_checkpoints=keep_runs)
    tokenize(load_config(model="micro"))
    ends = []
    for i in range(3):
        if i:
            _new_shard(ws, f"more{i}.txt", seed=20 + i, words=400)
        result, _ = _train(only_new=True)
        ends.append(result.step)  # type: ignore[attr-defined]
    on_disk = [r.step for r in list_checkpoints(CKPT) if r.complete]
    expected = ends if keep_runs == "all" else ends[-2:]
    assert on_disk == expected  # rotation kept one (the newest, also a run's end) and these
    # going back to "after run 1" works whenever it was kept
    if keep_runs == "all":
        ref = next(r for r in list_checkpoints(CKPT) if r.step == ends[0])
        assert ref.read_state().run_complete
