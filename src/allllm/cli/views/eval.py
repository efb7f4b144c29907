"""Terminal display of ``allllm eval``: a progress bar over rows and the result table.

Kept out of :mod:`allllm.use.evaluate` so evaluation runs headless (tests, scripts).
"""

from __future__ import annotations

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
from rich.table import Table

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


def render_eval(result: EvalResult, console: Console) -> None:
    """Per-shard losses (when there are several shards), then the total."""
    if len(result.shards) > 1:
        table = Table(show_edge=False, header_style="bold")
        for col, justify in (("shard", "left"), ("rows", "right"), ("tokens", "right")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        table.add_column("loss", justify="right")
        table.add_column("what", justify="left")
        for s in result.shards:
            loss = "-" if s["loss"] is None else f"{s['loss']:.4f}"
            table.add_row(
                escape(s["name"]), f"{s['rows']:,}", f"{s['tokens']:,}", loss, ROLES[s["role"]]
            )
        console.print(table)
    console.print(
        f"[bold]loss {result.loss:.4f}[/bold]  perplexity {result.perplexity:.3f}  over "
        f"{result.tokens:,} tokens ({result.rows:,} rows, {len(result.shards)} shard(s)) at step "
        f"{result.step}  [dim]({escape(result.checkpoint)})[/dim]",
        soft_wrap=True,
    )
