"""Terminal display of ``allllm tokenize``: progress bars over bytes and a summary table.

Kept out of the library so ``allllm.data.tokenize.run`` can run headless (tests,
scripts, other programs): the pipeline reports through the TokenizeProgress
protocol and this module draws it with rich.
"""

from __future__ import annotations

import math
import time

from rich import filesize
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn
from rich.table import Column, Table

from allllm.cli.views.tables import Col, fit_table, natural_width
from allllm.data.tokenize.summary import TokenizeSummary

#: what the bar's columns other than the name and the bar take: "123.4/567.8 MB",
#: "123.4 MB/s", "12.34M tok/s", "0:01:23" and the spaces between the six columns
_FIGURES_WIDTH = 14 + 10 + 12 + 7 + 5


def _short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _speed(nbytes: int, seconds: float) -> str:
    return f"{filesize.decimal(int(nbytes / seconds))}/s" if nbytes and seconds > 0 else "- B/s"


def _eta(remaining: int, bytes_per_s: float) -> str:
    if bytes_per_s <= 0:
        return "-:--:--"
    minutes, seconds = divmod(math.ceil(max(remaining, 0) / bytes_per_s), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


class RichTokenizeProgress:
    """Two bars, all input and the current file: bytes and ETA, and on the first MB/s and
    tokens/s.

    Speeds are averages since :meth:`begin`, computed here: rich's TransferSpeedColumn
    shows "?" until a bar has had two updates within its 30 s window, and the pipeline
    reports once per encoded chunk (megabytes), so a file's bar often gets one update
    and the total bar none during its first chunk. Both ETAs divide by that average.
    The widths follow the console: at 80 columns the name and the bar shrink so the
    figures stay whole.
    """

    def __init__(self, console: Console) -> None:
        room = max(console.width - _FIGURES_WIDTH, 24)
        self._name_width = max(min(room // 2, 48), 12)
        whole = Column(no_wrap=True)
        self._progress = Progress(
            TextColumn("{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(bar_width=max(min(room - self._name_width - 2, 40), 6)),
            DownloadColumn(table_column=whole),
            TextColumn("{task.fields[speed]}", style="progress.data.speed", table_column=whole),
            TextColumn("{task.fields[tok_rate]}", table_column=whole),
            TextColumn("{task.fields[eta]}", style="progress.remaining", table_column=whole),
            console=console,
            transient=False,
        )
        self._overall: TaskID | None = None
        self._file: TaskID | None = None
        self._total = self._done = self._tokens = 0
        self._file_total = self._file_done = 0
        self._started = time.perf_counter()

    def _task(self, description: str, total: int, speed: str = "") -> TaskID:
        return self._progress.add_task(
            description, total=total, speed=speed, tok_rate="", eta="-:--:--"
        )

    def begin(self, total_bytes: int, n_shards: int) -> None:
        if n_shards == 0:
            return
        self._progress.start()
        self._started = time.perf_counter()
        self._total = total_bytes
        label = f"all ({n_shards} shard{'s' if n_shards != 1 else ''})"
        self._overall = self._task(label, total_bytes, speed=_speed(0, 0))

    def begin_shard(self, name: str, nbytes: int) -> None:
        self._end_file()

    def begin_file(self, name: str, nbytes: int) -> None:
        self._end_file()
        self._file_total, self._file_done = nbytes, 0
        self._file = self._task(_short(name, self._name_width), nbytes)

    def advance(self, nbytes: int, ntokens: int) -> None:
        self._file_done += nbytes
        self._count(nbytes, ntokens, this_file=True)

    def advance_others(self, nbytes: int, ntokens: int) -> None:
        """The other ranks' work: the overall bar only."""
        self._count(nbytes, ntokens, this_file=False)

    def _count(self, nbytes: int, ntokens: int, this_file: bool) -> None:
        self._done += nbytes
        self._tokens += ntokens
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        rate = self._done / elapsed
        if self._file is not None:
            eta = _eta(self._file_total - self._file_done, rate)
            self._progress.update(self._file, advance=nbytes if this_file else 0, eta=eta)
        if self._overall is not None:
            self._progress.update(
                self._overall,
                advance=nbytes,
                speed=_speed(self._done, elapsed),
                tok_rate=f"{self._tokens / elapsed / 1e6:.2f}M tok/s",
                eta=_eta(self._total - self._done, rate),
            )

    def _end_file(self) -> None:
        if self._file is not None:
            self._progress.remove_task(self._file)
            self._file = None

    def end_shard(self) -> None:
        self._end_file()

    def end(self) -> None:
        self._end_file()
        self._progress.stop()


#: the wide layout: one row per shard, its name and its sources side by side
_SHARD_COLUMNS = (
    Col("shard"),
    Col("sources"),
    Col("documents", numeric=True, short="docs"),
    Col("tokens", numeric=True),
    Col("rows", numeric=True),
)
#: the narrow one (80 columns): the name, then its sources on the line below, in one column
_STACKED_COLUMNS = (
    Col("shard / sources"),
    Col("documents", numeric=True, short="docs"),
    Col("tokens", numeric=True),
    Col("rows", numeric=True),
)


def _shards_table(summary: TokenizeSummary, width: int) -> Table:
    rows = []
    for s in summary.shards:
        why = ", ".join(sorted(set(s.why)))
        sources = s.sources[0] if len(s.sources) == 1 else f"{len(s.sources)} sources (packed)"
        rows.append(
            [escape(s.stem), escape(f"{sources} [{why}]"), f"{s.documents:,}", f"{s.tokens:,}",
             f"{s.rows:,}"]
        )  # fmt: skip
    options = {"title": "shards written", "title_justify": "left"}
    if natural_width(_SHARD_COLUMNS, rows) <= width:
        return fit_table(width, _SHARD_COLUMNS, rows, **options)
    stacked = [[f"{r[0]}\n[dim]{r[1]}[/dim]", *r[2:]] for r in rows]
    return fit_table(width, _STACKED_COLUMNS, stacked, **options)


def _totals_table(summary: TokenizeSummary, width: int) -> Table:
    """One row when it fits, else one line per figure (nine numbers do not fit 80 columns)."""
    figures = [
        ("sources", f"{summary.sources:,}"),
        ("documents", f"{summary.documents:,}"),
        ("tokens", f"{summary.tokens:,}"),
        ("rows", f"{summary.rows:,}"),
        ("shards written", f"{len(summary.shards):,}"),
        ("up to date", f"{len(summary.up_to_date):,}"),
        ("superseded", f"{len(summary.superseded):,}"),
    ]
    # --force only: rebuilds identical to an intact shard (discarded) / repairing a broken one
    figures += [(k, f"{len(v):,}") for k, v in (("unchanged", summary.unchanged),
                                                ("replaced", summary.replaced)) if v]  # fmt: skip
    if summary.empty_records:  # records with empty or whitespace-only text, skipped
        figures.append(("empty records", f"{summary.empty_records:,}"))
    figures += [
        ("time", f"{summary.seconds:.1f} s"),
        ("MB/s", f"{summary.mb_per_s:.1f}" if summary.mb_per_s else "-"),
    ]
    options = {"title": "tokenize", "title_justify": "left"}
    across = [Col(name, numeric=True) for name, _ in figures]
    row = [value for _, value in figures]
    if natural_width(across, [row]) <= width:
        return fit_table(width, across, [row], **options)
    down = (Col(""), Col("", numeric=True))
    return fit_table(width, down, [list(f) for f in figures], show_header=False, **options)


def render_summary(summary: TokenizeSummary, console: Console) -> None:
    """The tables printed after a tokenize run: shards written, then the totals."""
    if summary.shards:
        console.print(_shards_table(summary, console.width))
    console.print(_totals_table(summary, console.width))
    if summary.cleaned:
        console.print(f"removed what {len(summary.cleaned)} interrupted shard(s) left behind")
    if not summary.shards and summary.up_to_date:
        console.print("everything is up to date: no new text since the last tokenize")
    elif not summary.shards and summary.unchanged:
        console.print(
            f"--force rebuilt {len(summary.unchanged):,} shard(s) identical to intact ones: "
            "kept the existing shards, nothing new"
        )
