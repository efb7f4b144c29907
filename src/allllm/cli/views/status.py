"""Draw the ``allllm status`` report (:func:`allllm.use.status.build_status`) with rich.

Kept apart from the report so scripts get the same facts from ``--json`` and
the table never holds a fact the JSON lacks.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape

from allllm.cli.views.tables import Col, fit_table
from allllm.model.sizes import format_count

_STYLE = {
    "new": "green",
    "seen": "cyan",
    "invalid": "red",
    "unverified": "yellow",
    "superseded": "dim",
    "duplicate": "dim",
    "missing": "magenta",
}

#: at 80 columns the formats give way first (``--json`` lists them): names and states fold
_COLUMNS = (
    Col("shard"),
    Col("formats", optional=True),
    Col("rows", numeric=True),
    Col("tokens", numeric=True),
    Col("state"),
)


def state_text(shard: dict[str, Any]) -> str:
    """``new``, ``seen @ step N``, ``invalid: reason``, ... (plain text, no markup)."""
    state, reason, step = shard["state"], shard.get("reason"), shard.get("step")
    if shard.get("anchor_only") and state in ("new", "seen"):
        text = "anchor (data.anchor)"
    elif state == "seen":
        text = f"seen @ step {step}"
    elif state == "missing":
        text = f"missing (seen @ step {step})"
    elif state == "duplicate":
        text = f"duplicate of {shard.get('duplicate_of')}"
    elif state == "superseded":
        text = f"superseded by {shard.get('superseded_by')}"
    elif state in ("invalid", "unverified") and reason:
        text = f"{state}: {reason}"
        if step is not None:
            text += f" (seen @ step {step})"
    elif state == "new" and shard.get("repeat_rows"):
        repeat, rows = shard["repeat_rows"], shard.get("train_rows") or 0
        if repeat >= rows:
            text = f"new (all {rows:,} rows already trained)"
        else:
            text = f"new — {repeat:,} of {rows:,} rows already trained"
    else:
        text = state
    extras = [
        label
        for flag, label in (
            ("eval_only", "eval only"),
            ("pending", "in the pending run"),
            ("tokenizer_unverified", "tokenizer unverified"),
            ("legacy", "legacy torch.save"),
        )
        if shard.get(flag)
    ]
    return f"{text} ({', '.join(extras)})" if extras else text


def _num(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _amount(tokens: int, rows: int) -> str:
    return f"{format_count(tokens)} tokens / {rows:,} rows"


def _totals_line(totals: dict[str, Any]) -> str:
    parts = [
        f"[green]new[/green] {_amount(totals['new_tokens'], totals['new_rows'])}",
        f"[cyan]seen[/cyan] {_amount(totals['seen_tokens'], totals['seen_rows'])}",
    ]
    if totals.get("repeat_rows"):
        parts.append(f"already trained {_amount(totals['repeat_tokens'], totals['repeat_rows'])}")
    if totals["val_rows"]:
        parts.append(f"validation {_amount(totals['val_tokens'], totals['val_rows'])}")
    if totals["eval_rows"]:
        parts.append(f"eval-only {_amount(totals['eval_tokens'], totals['eval_rows'])}")
    counts = ", ".join(f"{n} {s}" for s, n in totals["states"].items() if n)
    return f"totals: {'  ·  '.join(parts)}\nshards: {totals['shards']} ({counts or 'none'})"


def _checkpoint_line(ckpt: dict[str, Any] | None) -> str:
    if ckpt is None:
        return "latest checkpoint: none yet"
    line = f"latest checkpoint: step {ckpt.get('step')}"
    if ckpt.get("tokens_seen") is not None:
        line += f", {format_count(ckpt['tokens_seen'])} tokens trained"
    if ckpt.get("time"):
        line += f", {ckpt['time']}"
    if ckpt.get("path"):
        line += f"  ({escape(str(ckpt['path']))})"
    pending = ckpt.get("pending_run")
    if pending:
        line += (
            f"\npending run {pending.get('run_id')}: step {pending.get('steps_done')} of "
            f"{pending.get('steps_total')} on {len(pending.get('shards') or [])} shard(s) — "
            "`allllm train` finishes it, `--abandon-pending` drops it"
        )
    return line


def anchor_line(anchor: dict[str, Any]) -> str:
    """The anchor pool: its shards and rows, how far this pass is drawn, and invalid shards."""
    usable = [s for s in anchor["shards"] if s["state"] != "invalid"]
    line = (
        f"anchor {escape(repr(anchor['pattern']))} ({anchor['fraction']:.0%} of each run): "
        f"{len(usable)} shard(s), {anchor['rows']:,} rows; pass {anchor['pass']}: "
        f"{anchor['drawn']:,} drawn, {anchor['left']:,} left"
    )
    for s in anchor["shards"]:
        if s["state"] == "invalid":
            line += (
                f"\n  [red]invalid anchor shard[/red] {escape(s['meta'])}: {escape(s['reason'])}"
            )
    return line


def _change(value: float | None) -> str:
    if value is None:
        return ""
    style = "red" if value > 0.005 else ("green" if value < -0.005 else "dim")
    return f" [{style}]({value:+.3f})[/{style}]"


def forgetting_line(row: dict[str, Any]) -> str:
    """The forgetting matrix's latest row: each earlier run's loss now (change since right
    after it was trained), and the eval shards' (change since the first row)."""
    parts = [
        f"run {c['run']} {c['loss']:.3f}"
        + ("" if c["run"] == row["after_run"] else _change(c["change"]))
        for c in row["runs"]
    ]
    ev = row.get("eval_shards")
    if ev:
        parts.append(f"eval shards {ev['loss']:.3f}" + _change(ev["change"]))
    return (
        f"forgetting (loss after run {row['after_run']}, step {row['step']}; change since "
        "trained): " + ", ".join(parts)
    )


def render_status(report: dict[str, Any], console: Console, *, max_rows: int | None = None) -> None:
    """Print the report: a header, the shard table, totals, the latest checkpoint and notes.

    ``max_rows`` limits the table (the rest is counted; ``--json`` lists everything).
    """
    tok = report["tokenizer"]
    tok_label = tok["backend"] + (f":{tok['path']}" if tok.get("path") else "")
    if not tok["verified"] and report["shards"]:  # only worth saying when shards are compared
        tok_label += " (unverified)"
    console.print(
        f"[bold]{escape(str(report['config']))}[/bold]  data: {escape(report['data_dir'])}  "
        f"seq_len {report['seq_len']}  tokenizer {escape(tok_label)}"
        + ("  [dim](digests checked)[/dim]" if report.get("digests_checked") else "")
    )
    shards = report["shards"]
    if shards:
        shown = shards if max_rows is None else shards[:max_rows]
        rows = []
        for s in shown:
            style = _STYLE.get(s["state"], "")
            state = escape(state_text(s))
            rows.append(
                [
                    escape(s["name"]),
                    "+".join(s["formats"]) or "-",
                    _num(s["rows"]),
                    _num(s["tokens"]),
                    f"[{style}]{state}[/{style}]" if style else state,
                ]
            )
        table = fit_table(console.width, _COLUMNS, rows, show_edge=False, header_style="bold")
        console.print(table)
        if len(shown) < len(shards):
            console.print(f"... {len(shards) - len(shown)} more shard(s) (--json lists all)")
    console.print(_totals_line(report["totals"]))
    console.print(_checkpoint_line(report["checkpoint"]))
    if report.get("anchor"):
        console.print(anchor_line(report["anchor"]), soft_wrap=True)
    if report.get("forgetting"):
        console.print(forgetting_line(report["forgetting"]), soft_wrap=True)
    for note in report["notes"]:
        console.print(f"[yellow]note:[/yellow] {escape(note)}")


def render_provenance(report: dict[str, Any], console: Console) -> None:
    """What ``status --source PATH`` prints: per run the documents it trained, then the rest."""
    console.print(
        f"[bold]{escape(report['source'])}[/bold]: {report['documents']:,} document(s) in "
        f"{len(report['shards'])} shard(s)",
        soft_wrap=True,
    )
    for shard in report["shards"]:
        docs = "documents not recorded" if shard["documents"] is None else f"{shard['documents']:,}"
        where = f"seen @ step {shard['step']}" if shard["state"] == "seen" else shard["state"]
        console.print(f"  {escape(shard['name'])}: {docs} ({where})", soft_wrap=True)
    for run in report["runs"]:
        run_id = (run["run_id"] or "?")[:12]
        console.print(
            f"[cyan]trained[/cyan] {run['documents']:,} by run {run_id} (ended at step "
            f"{run['step']})"
        )
    if report["held_out"]:
        console.print(f"held out (validation) {report['held_out']:,}")
    console.print(
        f"[green]not trained yet[/green] {report['not_trained']:,}"
        if report["not_trained"]
        else "every document of this file is trained or held out"
    )
    for doc in report["not_trained_documents"]:
        console.print(
            f"  document {doc['document']} of {escape(doc['shard'])}: {doc['tokens']:,} tokens, "
            f"rows {doc['rows'][0]}–{doc['rows'][1]}",
            soft_wrap=True,
        )
    if report["not_trained"] > len(report["not_trained_documents"]):
        console.print(f"  (+{report['not_trained'] - len(report['not_trained_documents'])} more)")
    for note in report.get("notes", []):
        console.print(f"[dim]note: {escape(note)}[/dim]", soft_wrap=True)
