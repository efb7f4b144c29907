"""The forgetting matrix: the loss of the model after run j on the held-out text of run i.

When a run completes, the trainer freezes a fixed subset of its validation rows
(``train.forgetting_eval_tokens``; :mod:`allllm.train.forgetting`) into the
checkpoint's state, then evaluates the model on the frozen subset of every
completed run so far and on ``data.eval_shards``, and appends one line to
``evals.jsonl`` in the checkpoint dir. Old checkpoints are never evaluated
again: the matrix builds up one row a run. ``allllm eval --by-run`` adds rows
on demand (``--all-checkpoints``: for past checkpoints that still exist).

``evals.jsonl`` (append-only; format 1), one object a line::

    format_version, step, checkpoint, created, source (train | eval),
    after_run (runs completed at this checkpoint), run_id (of its latest run),
    run_complete (the checkpoint ends that run),
    cells [{run, run_id, loss, tokens, rows}]   (one per earlier run with a subset)
    eval_shards null | {loss, tokens, rows, shards [shard ids]}

This module reads the file and shapes the matrix (no torch, no evaluation):
``status`` shows its latest row, ``plot --forgetting`` draws it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from allllm.train.evals_log import EVALS_FILE, EVALS_FORMAT, append_row, has_row, read_rows

__all__ = [
    "EVALS_FILE",
    "EVALS_FORMAT",
    "Matrix",
    "MatrixRun",
    "append_row",
    "build_matrix",
    "has_row",
    "latest_row",
    "read_rows",
]


@dataclass
class MatrixRun:
    """One column of the matrix: a completed run and its frozen subset."""

    run: int  # 1-based number in the model's sequence of runs
    run_id: str
    step: int  # the step the run ended at
    rows: int  # rows in its frozen subset (0: the run had no validation rows)


@dataclass
class Matrix:
    """Rows "model after run j" × columns "data of run i" (i <= j), plus ``data.eval_shards``."""

    runs: list[MatrixRun] = field(default_factory=list)
    # after_run j -> {run i -> loss}; only rows of checkpoints that end a run of this lineage
    loss: dict[int, dict[int, float]] = field(default_factory=dict)
    eval_loss: dict[int, float] = field(default_factory=dict)  # after_run j -> eval_shards loss
    steps: dict[int, int] = field(default_factory=dict)  # after_run j -> its checkpoint step

    @property
    def rows(self) -> list[int]:
        return sorted(self.loss)

    def diagonal(self, run: int) -> float | None:
        """The loss on run ``run``'s data right after it was trained."""
        return self.loss.get(run, {}).get(run)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": [r.__dict__ for r in self.runs],
            "rows": [
                {
                    "after_run": j,
                    "step": self.steps[j],
                    "loss": {str(i): v for i, v in sorted(self.loss[j].items())},
                    "eval_loss": self.eval_loss.get(j),
                }
                for j in self.rows
            ],
        }


def build_matrix(subsets: list[dict[str, Any]], rows: list[dict[str, Any]]) -> Matrix:
    """The matrix of the lineage ``subsets`` (the latest checkpoint's frozen subsets) from
    ``evals.jsonl`` rows: a row counts when its checkpoint ends one of those runs (runs of a
    rolled-back history are left out); a later line for the same step wins."""
    matrix = Matrix()
    by_id: dict[str, MatrixRun] = {}
    for sub in subsets:
        run = MatrixRun(int(sub["run"]), str(sub["run_id"]), int(sub["step"]), int(sub["rows"]))
        matrix.runs.append(run)
        by_id[run.run_id] = run
    for line in rows:
        run = by_id.get(str(line.get("run_id")))
        if run is None or not line.get("run_complete") or line["step"] != run.step:
            continue
        cells = {}
        for cell in line["cells"]:
            if isinstance(cell, dict) and isinstance(cell.get("loss"), (int, float)):
                cells[int(cell["run"])] = float(cell["loss"])
        matrix.loss[run.run] = cells
        matrix.steps[run.run] = run.step
        ev = line.get("eval_shards")
        if isinstance(ev, dict) and isinstance(ev.get("loss"), (int, float)):
            matrix.eval_loss[run.run] = float(ev["loss"])
        else:
            matrix.eval_loss.pop(run.run, None)
    return matrix


def latest_row(matrix: Matrix) -> dict[str, Any] | None:
    """What ``status`` shows: the loss on each earlier run's data now against right after it
    was trained (None when the matrix has no row yet)."""
    if not matrix.loss:
        return None
    j = matrix.rows[-1]
    cells = []
    for run in matrix.runs:
        now = matrix.loss[j].get(run.run)
        if now is None:
            continue
        then = matrix.diagonal(run.run)
        cells.append(
            {
                "run": run.run,
                "run_id": run.run_id,
                "loss": now,
                "loss_after_run": then,
                "change": None if then is None else now - then,
            }
        )
    first_eval = next((matrix.eval_loss[k] for k in matrix.rows if k in matrix.eval_loss), None)
    now_eval = matrix.eval_loss.get(j)
    return {
        "after_run": j,
        "step": matrix.steps[j],
        "runs": cells,
        "eval_shards": None
        if now_eval is None
        else {"loss": now_eval, "loss_first": first_eval, "change": now_eval - (first_eval or 0)},
    }
