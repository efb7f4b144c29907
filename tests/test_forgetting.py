"""The forgetting matrix: frozen per-run subsets, evals.jsonl rows, eval --by-run, status, plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from allllm.config import load_config
from allllm.data.row_filter import RowFilter, effective_rows
from allllm.errors import FormatVersionError
from allllm.train.checkpoint import latest_checkpoint
from allllm.train.forgetting import freeze_subset
from allllm.train.options import QuietReporter, TrainOptions
from allllm.train.run_plan import RunPlan
from allllm.train.session import train
from allllm.use.forgetting import build_matrix, latest_row, read_rows
from allllm.use.status import build_status
from cli_helpers import run_cli
from train_helpers import add_raw
from use_helpers import inside, trained_workspace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run 1 on corpus A (two files), run 2 on corpus B (two more files)."""
    from allllm.data.tokenize.run import tokenize

    root = trained_workspace(tmp_path_factory.mktemp("forgetting"))
    add_raw(root, "b1.txt", seed=21)
    add_raw(root, "b2.txt", seed=22)
    with inside(root):
        cfg = load_config(model="micro")
        tokenize(cfg)
        result = train(cfg, TrainOptions(only_new=True), QuietReporter())
        assert result.status == "trained" and result.runs[0]["forgetting"] is not None
    return root


def _rows(root: Path) -> list[dict]:
    return read_rows(root / "checkpoints/micro")


def test_the_stored_matrix_has_cells_1A_2A_2B(ws: Path) -> None:
    rows = _rows(ws)
    assert [r["after_run"] for r in rows] == [1, 2] and all(r["run_complete"] for r in rows)
    assert [[c["run"] for c in r["cells"]] for r in rows] == [[1], [1, 2]]
    run_ids = [json.loads(x)["run_id"] for x in (ws / "checkpoints/micro/runs.jsonl").open()]
    assert [c["run_id"] for c in rows[1]["cells"]] == run_ids  # column i is run i's data
    assert all(c["loss"] > 0 and c["tokens"] > 0 for r in rows for c in r["cells"])
    # the diagonal is the run's own subset right after it: status compares against it
    ref = latest_checkpoint(ws / "checkpoints/micro")
    assert ref is not None
    state = ref.read_state()
    matrix = build_matrix(state.eval_subsets, rows)
    assert matrix.diagonal(1) == rows[0]["cells"][0]["loss"]
    latest = latest_row(matrix)
    assert latest is not None and latest["after_run"] == 2
    first = latest["runs"][0]
    assert first["change"] == pytest.approx(first["loss"] - first["loss_after_run"])


def test_eval_by_run_reproduces_the_stored_row(
    ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = _rows(ws)[-1]
    before = len(_rows(ws))
    with inside(ws):
        code, out, err = run_cli(["eval", "--model", "micro", "--by-run", "--json"], capsys)
    assert code == 0, err
    got = json.loads(out)
    row = got["rows"][0]
    assert row["step"] == stored["step"] and got["appended"] == []  # the row was there already
    for mine, theirs in zip(row["cells"], stored["cells"], strict=True):
        assert mine["run"] == theirs["run"] and mine["tokens"] == theirs["tokens"]
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-6)
    assert len(_rows(ws)) == before  # nothing appended twice


def test_all_checkpoints_fills_in_rows_of_kept_checkpoints(
    ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with inside(ws):
        code, out, err = run_cli(
            ["eval", "--model", "micro", "--by-run", "--all-checkpoints", "--json"], capsys
        )
        assert code == 0, err
        got = json.loads(out)
        final = latest_checkpoint(Path("checkpoints/micro"))
        assert final is not None and final.step in got["skipped"]
        assert got["appended"], "the rotating checkpoints of run 2 had no row"
        added = [r for r in _rows(ws) if r["source"] == "eval"]
        assert {r["step"] for r in added} == set(got["appended"])
        assert all(not r["run_complete"] and r["after_run"] == 1 for r in added)
        # a second pass has nothing left to fill in
        code, out, _ = run_cli(
            ["eval", "--model", "micro", "--by-run", "--all-checkpoints", "--json"], capsys
        )
        assert code == 0 and json.loads(out)["appended"] == []
        assert [r["after_run"] for r in json.loads(out)["matrix"]["rows"]] == [1, 2]


def test_status_and_plot_read_the_matrix(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with inside(ws):
        cfg = load_config(model="micro")
        from allllm.train.checkpoint import checkpoint_summary

        report = build_status(cfg, checkpoint=checkpoint_summary(cfg.checkpoint_path))
        row = report["forgetting"]
        assert row["after_run"] == 2 and [c["run"] for c in row["runs"]] == [1, 2]
        code, out, err = run_cli(["status", "--model", "micro"], capsys)
        assert code == 0 and "forgetting (loss after run 2" in out, err
        code, out, err = run_cli(
            ["plot", "--model", "micro", "--forgetting", "-o", "f.png"], capsys
        )
        assert code == 0, err
        assert Path("f.png").read_bytes()[:8] == PNG_MAGIC


def test_eval_by_run_usage_errors(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with inside(ws):
        code, _, err = run_cli(["eval", "--model", "micro", "--all-checkpoints"], capsys)
        assert code == 2 and "needs --by-run" in err
        code, _, err = run_cli(["eval", "--model", "micro", "--by-run", "--shards", "x*"], capsys)
        assert code == 2


def test_a_newer_matrix_line_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "evals.jsonl").write_text(json.dumps({"format_version": 9, "step": 1, "cells": []}))
    with pytest.raises(FormatVersionError, match="format_version 9") as err:
        read_rows(tmp_path)
    assert "\n" not in str(err.value)


def _plan(n_shards: int = 3, n_rows: int = 400) -> RunPlan:
    ids = [f"{k:064x}" for k in range(1, n_shards + 1)]
    return RunPlan(
        run_id="r" * 64, shard_ids=ids, shard_files={}, shard_rows={}, shard_tokens={},
        replay={}, epochs=1, batch_size=8, order_seed=1, val_seed=7, val_fraction=0.1,
        start_step=0, n_rows=0, total_steps=0, total_tokens=0, started="",
        row_filters={ids[0]: RowFilter(not_trained=[], val_dropped=[(0, n_rows)]).to_dict()},
    )  # fmt: skip


def test_the_frozen_subset_is_fixed_spread_and_within_the_budget() -> None:
    plan = _plan()
    n_rows = dict.fromkeys(plan.shard_ids, 400)
    a = freeze_subset(plan, n_rows, seq_len=32, budget_tokens=32 * 20, number=3, step=9)
    b = freeze_subset(plan, n_rows, seq_len=32, budget_tokens=32 * 20, number=3, step=9)
    assert a == b and a["rows"] == 20 and a["run"] == 3 and a["step"] == 9
    # only validation rows the row filter kept: the first shard's were all dropped
    assert plan.shard_ids[0] not in a["shards"] and len(a["shards"]) == 2
    for sid, rows in a["shards"].items():
        val = effective_rows((7, 0.1), sid, 400, RowFilter([], []))[1]
        assert set(rows) <= set(val.tolist())
    empty = freeze_subset(plan, n_rows, seq_len=32, budget_tokens=0, number=4, step=9)
    assert empty["shards"] == {} and empty["rows"] == 0 and empty["run"] == 4
