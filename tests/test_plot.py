"""``allllm plot``: each step once (replays after a crash, rewinds), run bands, a real PNG."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from allllm.cli import main
from allllm.errors import AllllmError, CheckpointError
from allllm.use.plot import plot_losses, read_curves, timeline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rec(step: int, loss: float, run: str = "r1", **extra: object) -> dict:
    return {"step": step, "tokens": step * 100, "loss": loss, "lr": 1e-3, "time": 0.0,
            "run_id": run, **extra}  # fmt: skip


def _write(ckpt: Path, metrics: list[dict], runs: list[dict]) -> Path:
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    (ckpt / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    return ckpt


def test_replayed_steps_count_once_with_their_latest_values() -> None:
    lines = [_rec(1, 5.0), _rec(2, 4.0), _rec(3, 3.9), _rec(2, 4.1), _rec(3, 3.5), _rec(4, 3.0)]
    kept = timeline(lines)
    assert [r["step"] for r in kept] == [1, 2, 3, 4]
    assert [r["loss"] for r in kept] == [5.0, 4.1, 3.5, 3.0]


def test_a_rewind_drops_the_steps_that_were_trained_over() -> None:
    # steps 4-6 of an abandoned run, then a new run from step 3 that has done step 4 so far
    lines = [_rec(s, 6.0 - s) for s in range(1, 7)] + [_rec(4, 9.0, run="r2")]
    kept = timeline(lines)
    assert [(r["step"], r["run_id"]) for r in kept] == [(1, "r1"), (2, "r1"), (3, "r1"), (4, "r2")]
    assert timeline([{"step": "x"}, {"loss": 1.0}, _rec(1, 2.0)]) == [_rec(1, 2.0)]


def test_curves_runs_and_a_pending_run(tmp_path: Path) -> None:
    metrics = [_rec(s, 5.0 - 0.1 * s) for s in range(1, 6)]
    metrics[4]["val_loss"] = 4.6
    metrics += [_rec(3, 9.9)]  # a torn replay: overwritten below
    metrics = metrics[:-1] + [_rec(s, 4.5 - 0.1 * s, run="r2") for s in range(6, 9)]
    metrics[-1]["val_loss"] = 4.0
    metrics += [_rec(s, 4.0 - 0.1 * s, run="r3") for s in range(9, 11)]  # pending, no runs line
    runs = [
        {"run_id": "r1", "start_step": 0, "end_step": 5, "shards": ["a", "b"]},
        {"run_id": "r2", "start_step": 5, "end_step": 8, "shards": ["c"]},
        {
            "run_id": "r2",
            "start_step": 5,
            "end_step": 8,
            "shards": ["c"],
        },  # re-logged after a crash
    ]
    curves = read_curves(_write(tmp_path, metrics, runs))
    assert curves.steps == list(range(1, 11))
    assert curves.val_tokens == [500, 800] and curves.val_loss == [4.6, 4.0]
    spans = [(r.run_id, r.start_tokens, r.end_tokens, r.shards, r.finished) for r in curves.runs]
    assert spans == [
        ("r1", 0, 500, 2, True),
        ("r2", 500, 800, 1, True),
        ("r3", 800, 1000, None, False),
    ]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="plot is an optional extra")
    metrics = [_rec(s, 5.0 / s, val_loss=5.1 / s) for s in range(1, 30)]
    ckpt = _write(tmp_path / "ckpt", metrics, [{"run_id": "r1", "start_step": 0, "end_step": 29}])
    path, curves = plot_losses(ckpt, tmp_path / "out" / "loss.png", name="demo")
    assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 10_000
    assert len(curves.loss) == 29 and len(curves.runs) == 1


def test_missing_matplotlib_and_missing_metrics_are_one_line_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(CheckpointError, match=r"no training metrics .* train first"):
        plot_losses(tmp_path, tmp_path / "x.png", name="m")
    ckpt = _write(tmp_path / "c", [_rec(1, 2.0)], [])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "matplotlib.figure", raising=False)
    monkeypatch.delitem(sys.modules, "matplotlib.backends.backend_agg", raising=False)
    with pytest.raises(AllllmError, match=r"matplotlib.*allllm\[plot\]"):
        plot_losses(ckpt, tmp_path / "x.png", name="m")
    assert not (tmp_path / "x.png").exists()


def test_cli_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib", reason="plot is an optional extra")
    from train_helpers import MICRO_CONFIG

    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "micro.json").write_text(json.dumps(MICRO_CONFIG))
    _write(tmp_path / "checkpoints" / "micro", [_rec(s, 3.0 / s) for s in range(1, 5)], [])
    main(["plot", "--model", "micro", "--out", "curves.png"])  # returns: exit code 0
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)
    assert "4 steps" in capsys.readouterr().out
