"""Tables that stay readable in a narrow terminal (80 columns): numbers whole, names folded.

rich shrinks a table that is too wide by wrapping its wrapable columns and, when that is
not enough, cuts every column with "…", numbers included. :func:`fit_table` keeps numeric
columns unwrappable at their full width and lets text columns fold (a long shard name
takes two lines rather than losing its end); before folding it switches to short headers
and leaves optional columns out (``--json`` still has them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class Col:
    """One column: its header, whether it holds numbers, and how it gives way when narrow."""

    header: str
    numeric: bool = False
    short: str | None = None  # the header used when the table is too wide with the full one
    optional: bool = False  # left out rather than folding the other columns


def cell_width(cell: str) -> int:
    """Width of a cell's widest line, rich markup not counted."""
    return max((Text.from_markup(line).cell_len for line in cell.split("\n")), default=0)


def unwrapped(console: Console) -> bool:
    """Whether a long line is printed as one line: in logs and pipes (greppable), not on a
    terminal, where rich wraps it at spaces so no number is broken by the terminal's wrap."""
    return not console.is_terminal


def _header(col: Col, short: bool) -> str:
    return col.short if short and col.short else col.header


def _content_widths(cols: Sequence[Col], rows: Sequence[Sequence[str]], short: bool) -> list[int]:
    return [
        max([cell_width(_header(c, short))] + [cell_width(r[i]) for r in rows])
        for i, c in enumerate(cols)
    ]


def _frame(n_cols: int, show_edge: bool) -> int:
    """Padding (one space each side) and box lines around ``n_cols`` columns."""
    return 2 * n_cols + max(n_cols - 1, 0) + (2 if show_edge else 0)


def natural_width(
    cols: Sequence[Col], rows: Sequence[Sequence[str]], *, show_edge: bool = True
) -> int:
    """The width the table takes with nothing folded."""
    return sum(_content_widths(cols, rows, False)) + _frame(len(cols), show_edge)


def fit_table(
    width: int,
    cols: Sequence[Col],
    rows: Sequence[Sequence[str]],
    *,
    show_edge: bool = True,
    **table_options: Any,
) -> Table:
    """A table of ``rows`` that fits ``width`` columns without cutting a number.

    When the table does not fit unfolded: short headers, then optional columns left out
    (rightmost first) while it still does not, then text columns fold.
    """
    keep = list(range(len(cols)))
    short = False

    def widths() -> dict[int, int]:
        kept = _content_widths([cols[i] for i in keep], [[r[i] for i in keep] for r in rows], short)
        return dict(zip(keep, kept, strict=True))

    def folds() -> bool:
        return sum(widths().values()) + _frame(len(keep), show_edge) > width

    short = folds() and any(c.short for c in cols)
    for i in reversed(range(len(cols))):
        if not folds():
            break
        if cols[i].optional:
            keep.remove(i)
    final = widths()
    table = Table(show_edge=show_edge, **table_options)
    for i in keep:
        col = cols[i]
        if col.numeric:
            table.add_column(_header(col, short), justify="right", no_wrap=True, min_width=final[i])
        else:
            table.add_column(_header(col, short), overflow="fold")
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    return table
