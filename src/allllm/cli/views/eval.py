"""Terminal display of ``allllm eval``: a progress bar over rows and the result table.

Kept out of :mod:`allllm.use.evaluate` so evaluation runs headless (tests, scripts).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from allllm.cli.views.tables import Col, fit_table, unwrapped
from allllm.use.evaluate import EvalResult

ROLES = {"validation": "validation rows", "eval_shard": "eval shard (all rows)", "all": "all rows"}


class RichEvalProgress:
    """One bar: rows evaluated of all chosen rows, with the time left."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("eval"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._task: TaskID | None = None

    def begin(self, total_rows: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task("eval", total=total_rows)

    def advance(self, rows: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, advance=rows)

    def end(self) -> None:
        self._progress.stop()


#: at 80 columns the shard names and their roles fold; the numbers stay whole
_COLUMNS = (
    Col("shard"),
    Col("rows", numeric=True),
    Col("tokens", numeric=True),
    Col("loss", numeric=True),
    Col("what"),
)


def render_eval(result: EvalResult, console: Console) -> None:
    """Per-shard losses (when there are several shards), then the total and the checkpoint.

    The checkpoint's path has a line of its own, so the figures before it wrap at spaces
    on a terminal and never break inside a number.
    """
    if len(result.shards) > 1:
        rows = [
            [
                escape(s["name"]),
                f"{s['rows']:,}",
                f"{s['tokens']:,}",
                "-" if s["loss"] is None else f"{s['loss']:.4f}",
                ROLES[s["role"]],
            ]
            for s in result.shards
        ]
        console.print(
            fit_table(console.width, _COLUMNS, rows, show_edge=False, header_style="bold")
        )
    soft = unwrapped(console)
    console.print(
        f"[bold]loss {result.loss:.4f}[/bold]  perplexity {result.perplexity:.3f}  over "
        f"{result.tokens:,} tokens ({result.rows:,} rows, {len(result.shards)} shard(s)) at step "
        f"{result.step}",
        soft_wrap=soft,
    )
    console.print(f"[dim]checkpoint {escape(result.checkpoint)}[/dim]", soft_wrap=soft)


def render_matrix(matrix: dict[str, Any], console: Console, *, evaluated: list[int]) -> None:
    """The forgetting matrix: one line per "after run j", the loss on each run i's data."""
    runs = [r["run"] for r in matrix["runs"] if r["rows"]]
    has_eval = any(row.get("eval_loss") is not None for row in matrix["rows"])
    cols = [Col("after run"), Col("step", numeric=True)]
    cols += [Col(f"run {i}", numeric=True) for i in runs]
    if has_eval:
        cols.append(Col("eval", numeric=True))
    rows = []
    for row in matrix["rows"]:
        cells = [str(row["after_run"]), f"{row['step']:,}"]
        cells += [f"{row['loss'][str(i)]:.4f}" if str(i) in row["loss"] else "" for i in runs]
        if has_eval:
            cells.append("" if row.get("eval_loss") is None else f"{row['eval_loss']:.4f}")
        rows.append(cells)
    if rows:
        console.print(
            "loss of the model after run j (rows) on the held-out text of run i (columns)"
        )
        console.print(fit_table(console.width, cols, rows, show_edge=False, header_style="bold"))
    else:
        console.print("the forgetting matrix has no row of a completed run yet")
    if evaluated:
        console.print(
            f"evaluated step(s) {', '.join(map(str, evaluated))} (appended to evals.jsonl)"
        )
