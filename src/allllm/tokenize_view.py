"""Terminal display of ``allllm tokenize``: a progress bar over bytes and a summary table.

Kept out of the library so ``allllm.data.tokenize`` can run headless (tests,
scripts, other programs): the pipeline reports through the TokenizeProgress
protocol and this module draws it with rich.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from allllm.data.tokenize import TokenizeSummary


class RichTokenizeProgress:
    """Overall and per-shard bars: bytes done, MB/s, tokens/s, ETA."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}", table_column=None),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[tok_rate]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._overall: TaskID | None = None
        self._shard: TaskID | None = None
        self._tokens = 0
        self._started = time.perf_counter()

    def _rate(self) -> str:
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        return f"{self._tokens / elapsed / 1e6:.2f}M tok/s"

    def begin(self, total_bytes: int, n_shards: int) -> None:
        if n_shards == 0:
            return
        self._progress.start()
        self._started = time.perf_counter()
        self._overall = self._progress.add_task(
            f"all ({n_shards} shard{'s' if n_shards != 1 else ''})", total=total_bytes, tok_rate=""
        )

    def begin_shard(self, name: str, nbytes: int) -> None:
        short = name if len(name) <= 48 else "…" + name[-47:]
        self._shard = self._progress.add_task(short, total=nbytes, tok_rate="")

    def advance(self, nbytes: int, ntokens: int) -> None:
        self._tokens += ntokens
        rate = self._rate()
        if self._shard is not None:
            self._progress.update(self._shard, advance=nbytes, tok_rate=rate)
        if self._overall is not None:
            self._progress.update(self._overall, advance=nbytes, tok_rate=rate)

    def end_shard(self) -> None:
        if self._shard is not None:
            self._progress.remove_task(self._shard)
            self._shard = None

    def end(self) -> None:
        self._progress.stop()


def render_summary(summary: TokenizeSummary, console: Console) -> None:
    """The table printed after a tokenize run."""
    if summary.shards:
        table = Table(title="shards written", title_justify="left")
        for col, justify in (
            ("shard", "left"),
            ("sources", "left"),
            ("documents", "right"),
            ("tokens", "right"),
            ("rows", "right"),
        ):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for s in summary.shards:
            why = sorted(set(s.why))
            sources = s.sources[0] if len(s.sources) == 1 else f"{len(s.sources)} sources (packed)"
            table.add_row(
                s.stem,
                f"{sources} [{', '.join(why)}]",
                f"{s.documents:,}",
                f"{s.tokens:,}",
                f"{s.rows:,}",
            )
        console.print(table)
    rate = f"{summary.bytes / 1e6 / summary.seconds:.1f} MB/s" if summary.seconds else "-"
    parts: list[Any] = [
        f"sources: {summary.sources}",
        f"written: {len(summary.shards)}",
        f"up to date: {len(summary.up_to_date)}",
        f"superseded: {len(summary.superseded)}",
        f"documents: {summary.documents:,}",
        f"tokens: {summary.tokens:,}",
        f"rows: {summary.rows:,}",
        f"time: {summary.seconds:.1f}s",
        rate,
    ]
    console.print("  ".join(str(p) for p in parts))
    if not summary.shards and summary.up_to_date:
        console.print("everything is up to date: no new text since the last tokenize")
