"""Terminal display of ``allllm config list``: one row per config, numbers whole at 80 columns.

Takes the rows the verb builds for ``--json``, so the table never holds a fact the JSON lacks.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape

from allllm.cli.views.tables import Col, fit_table
from allllm.model.sizes import format_count

_COLUMNS = (
    Col("name"),
    Col("source"),
    Col("arch"),
    Col("params", numeric=True),
    Col("seq_len", numeric=True),
    Col("tokenizer"),
)


def render_config_list(rows: list[dict[str, Any]], console: Console) -> None:
    """The table, then a line per config that does not load (its error is too long for a cell)."""
    cells = [
        [escape(r["name"]), escape(r["source"]), "[red]invalid[/red]", "-", "-", "-"]
        if "error" in r
        else [
            escape(r["name"]),
            escape(r["source"]),
            escape(r["arch"]),
            format_count(r["parameters"]),
            str(r["seq_len"]),
            escape(r["tokenizer"]),
        ]
        for r in rows
    ]
    console.print(fit_table(console.width, _COLUMNS, cells, title="configs", title_justify="left"))
    for r in rows:
        if "error" in r:
            console.print(f"[red]invalid[/red] {escape(r['name'])}: {escape(r['error'])}")
