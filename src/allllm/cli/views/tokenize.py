"""Terminal display of ``allllm tokenize``: progress bars over bytes and a summary table.

Kept out of the library so ``allllm.data.tokenize.run`` can run headless (tests,
scripts, other programs): the pipeline reports through the TokenizeProgress
protocol and this module draws it with rich.
"""

from __future__ import annotations

import time

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

from allllm.data.tokenize.summary import TokenizeSummary


def _short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


class RichTokenizeProgress:
    """Two bars — all input and the current file — with bytes, MB/s, tokens/s and ETA."""

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
        self._file: TaskID | None = None
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
        self._end_file()

    def begin_file(self, name: str, nbytes: int) -> None:
        self._end_file()
        self._file = self._progress.add_task(_short(name), total=nbytes, tok_rate="")

    def advance(self, nbytes: int, ntokens: int) -> None:
        self._tokens += ntokens
        rate = self._rate()
        if self._file is not None:
            self._progress.update(self._file, advance=nbytes, tok_rate=rate)
        if self._overall is not None:
            self._progress.update(self._overall, advance=nbytes, tok_rate=rate)

    def _end_file(self) -> None:
        if self._file is not None:
            self._progress.remove_task(self._file)
            self._file = None

    def end_shard(self) -> None:
        self._end_file()

    def end(self) -> None:
        self._end_file()
        self._progress.stop()


def render_summary(summary: TokenizeSummary, console: Console) -> None:
    """The tables printed after a tokenize run: shards written, then the totals."""
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
            why = ", ".join(sorted(set(s.why)))
            sources = s.sources[0] if len(s.sources) == 1 else f"{len(s.sources)} sources (packed)"
            table.add_row(
                s.stem, f"{sources} [{why}]", f"{s.documents:,}", f"{s.tokens:,}", f"{s.rows:,}"
            )
        console.print(table)
    totals = Table(title="tokenize", title_justify="left")
    columns = [
        ("sources", str(summary.sources)),
        ("documents", f"{summary.documents:,}"),
        ("tokens", f"{summary.tokens:,}"),
        ("rows", f"{summary.rows:,}"),
        ("shards written", str(len(summary.shards))),
        ("up to date", str(len(summary.up_to_date))),
        ("superseded", str(len(summary.superseded))),
        ("time", f"{summary.seconds:.1f} s"),
        ("MB/s", f"{summary.mb_per_s:.1f}" if summary.mb_per_s else "-"),
    ]
    for name, _ in columns:
        totals.add_column(name, justify="right")
    totals.add_row(*(value for _, value in columns))
    console.print(totals)
    if summary.cleaned:
        console.print(f"removed what {len(summary.cleaned)} interrupted shard(s) left behind")
    if not summary.shards and summary.up_to_date:
        console.print("everything is up to date: no new text since the last tokenize")
