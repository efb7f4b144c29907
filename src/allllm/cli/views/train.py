"""Terminal display of ``allllm train``: a live status line, messages and summaries.

The trainer reports through the ``Reporter`` protocol (``allllm.train.options``);
this module draws it with rich — a progress bar with step/total, loss, lr,
tokens/s (MFU on GPU) and ETA — so the library stays usable headless.
"""

from __future__ import annotations

import textwrap
import time
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
from rich.table import Column

from allllm.cli.views.tables import unwrapped
from allllm.model.sizes import format_count

LOG_EVERY_S = 30.0  # without a terminal: one progress line at most this often


class RichTrainReporter:
    """Live progress for rank 0; other ranks stay silent except for warnings."""

    def __init__(
        self, console: Console, err_console: Console, *, quiet: bool = False, main: bool = True
    ) -> None:
        self.console = console
        self.err_console = err_console
        self.quiet = quiet
        self.main = main
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last: dict[str, Any] = {}
        self._last_line = time.monotonic()

    # -- messages -----------------------------------------------------------------------------
    def message(self, text: str) -> None:
        if self.main and not self.quiet:
            self.console.print(escape(text), soft_wrap=True)

    def warn(self, text: str) -> None:
        if self.main:
            self.err_console.print(f"[yellow]warning:[/yellow] {escape(text)}", soft_wrap=True)

    # -- runs ---------------------------------------------------------------------------------
    def run_started(self, info: dict[str, Any]) -> None:
        if not self.main or self.quiet:
            return
        verb = "resuming pending run" if info["resumed"] else "new run"
        shards = info["shards"]
        mixed = [f"{info['replay_rows']:,} replay"] if info["replay_rows"] else []
        if info.get("anchor_rows"):
            mixed.append(f"{info['anchor_rows']:,} anchor")
        replay = f" (incl. {', '.join(mixed)})" if mixed else ""
        soft = unwrapped(self.console)
        self.console.print(
            f"[bold]{verb} {info['run_id'][:12]}[/bold]: {len(shards)} shard(s), "
            f"{info['rows']:,} rows{replay} × {info['epochs']} epoch(s) = "
            f"{info['total_steps']:,} steps, {format_count(info['total_tokens'])} tokens",
            soft_wrap=soft,
        )
        kept = kept_rows_line(info)
        if kept:
            self.console.print(f"  {kept}", soft_wrap=soft, highlight=False)
        for name in shards[:3]:  # a line each: shard file names are long
            self.console.print(f"  {escape(name)}", soft_wrap=soft, highlight=False)
        if len(shards) > 3:
            self.console.print(f"  (+{len(shards) - 3} more)")
        if not self.console.is_terminal:
            return  # logs and pipes get a plain line now and then instead of a live bar
        whole = Column(no_wrap=True)
        self._progress = Progress(
            TextColumn("step {task.fields[step]}", table_column=whole),
            BarColumn(bar_width=max(min(self.console.width - 80, 40), 10)),
            MofNCompleteColumn(table_column=whole),
            # the stats wrap at their spaces rather than lose their end at 80 columns
            TextColumn("{task.fields[stats]}", table_column=Column(overflow="fold")),
            TimeRemainingColumn(table_column=whole),
            console=self.console,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "train",
            total=info["total_steps"],
            completed=info["steps_done"],
            step=info["step"],
            stats="",
        )

    def step(self, record: dict[str, Any]) -> None:
        self._last = record
        loss = record.get("loss")
        shown = "nan" if loss is None else f"{loss:.4f}"
        stats = f"loss {shown}  lr {record['lr']:.2e}  {record['tokens_per_s']:,.0f} tok/s"
        if record.get("skipped"):
            stats += "  SKIPPED (not finite)"
        if "mfu" in record:
            stats += f"  MFU {record['mfu']:.1%}"
        if "val_loss" in record:
            stats += f"  val {record['val_loss']:.4f}"
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, completed=record["run_step"], step=record["step"], stats=stats
            )
            return
        now = time.monotonic()
        last_step = record["run_step"] >= record["run_steps"]
        if self.main and not self.quiet and (now - self._last_line >= LOG_EVERY_S or last_step):
            self._last_line = now
            self.console.print(
                f"step {record['step']} ({record['run_step']}/{record['run_steps']})  {stats}",
                soft_wrap=True,
                highlight=False,
            )

    def evaluated(self, record: dict[str, Any]) -> None:
        if self._progress is not None and not self.quiet:
            parts = [f"{k} {v:.4f}" for k, v in record.items() if k != "step"]
            self._progress.console.print(f"step {record['step']}: " + "  ".join(parts))

    def checkpoint_saved(self, path: str, step: int) -> None:
        if self.main and not self.quiet:
            target = self._progress.console if self._progress else self.console
            target.print(f"[dim]checkpoint {escape(path)}[/dim]")

    def run_finished(self, summary: dict[str, Any]) -> None:
        self.close()
        if not self.main or self.quiet:
            return
        loss = summary.get("final_loss")
        val = summary.get("final_val_loss")
        self.console.print(
            f"[bold green]run {summary['run_id'][:12]} done[/bold green]: {len(summary['shards'])} "
            f"shard(s), {format_count(summary['tokens'])} tokens, steps {summary['start_step']}→"
            f"{summary['end_step']}, {summary.get('seconds', 0):.0f}s"
            + (f", loss {loss:.4f}" if loss is not None else "")
            + (f", val {val:.4f}" if val is not None else ""),
            soft_wrap=unwrapped(self.console),
        )
        kept = kept_rows_line(summary)
        if kept:
            self.console.print(f"  {kept}", soft_wrap=unwrapped(self.console), highlight=False)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None


def kept_rows_line(info: dict[str, Any]) -> str:
    """What the document ledger kept out of a run ("" when nothing): skipped, held out, dedup."""
    parts = []
    if info.get("skipped_rows"):
        parts.append(
            f"{info['skipped_rows']:,} rows already trained "
            f"({format_count(info.get('skipped_tokens', 0))} tokens)"
        )
    if info.get("held_out_rows"):
        parts.append(f"{info['held_out_rows']:,} rows hold held-out documents")
    if info.get("dedup_rows"):
        parts.append(f"{info['dedup_rows']:,} rows only repeat this run's documents")
    return "skipped: " + "; ".join(parts) if parts else ""


def render_dry_run(plan: dict[str, Any], console: Console) -> None:
    """What ``train --dry-run`` prints."""
    pending, new, est = plan.get("pending"), plan.get("new"), plan.get("estimate")
    console.print(f"[bold]dry run[/bold] — nothing is trained or written (at step {plan['step']})")
    for label, run in (("pending run (finished first)", pending), ("new run", new)):
        if not run:
            continue
        shards = [", ".join(files.values()) for files in run["shard_files"].values()]
        replay = sum(len(r) for r in run["replay"].values())
        anchor = sum(len(r) for r in (run.get("anchor") or {}).values())
        mixed = ([f"{replay:,} replay"] if replay else []) + (
            [f"{anchor:,} anchor"] if anchor else []
        )
        console.print(
            f"{label} {run['run_id'][:12]}: {len(shards)} shard(s), {run['n_rows']:,} rows"
            + (f" (incl. {', '.join(mixed)})" if mixed else "")
            + f", {run['epochs']} epoch(s), steps {run['steps_done']}/{run['total_steps']}, "
            f"{format_count(run['total_tokens'])} tokens",
            soft_wrap=True,
        )
        kept = kept_rows_line(run)
        if kept:
            console.print(f"  {kept}", soft_wrap=True)
        for name in shards:
            console.print(f"  {escape(name)}", soft_wrap=True)
    if plan.get("optimizer_changes"):
        console.print(
            "the new run takes the config's optimizer settings (moments kept): "
            + "; ".join(plan["optimizer_changes"]),
            soft_wrap=True,
        )
    if not pending and not new:
        console.print("nothing to train")
    if est:
        console.print(
            f"estimate: {est['seconds_per_step']:.2f} s/step × {est['steps']} steps ≈ "
            f"{_duration(est['seconds_total'])}; {format_count(est['parameters'])} parameters; memory ≈ "
            f"{est['peak_bytes'] / 2**30:.2f} GiB {est['memory_where']} "
            f"(weights+grads+AdamW {est['static_bytes'] / 2**30:.2f} GiB)",
            soft_wrap=True,
        )
    if plan.get("memory_plan"):
        for line in memory_plan_lines(plan["memory_plan"]):
            console.print(escape(line), highlight=False)


def memory_plan_lines(plan: dict[str, Any]) -> list[str]:
    """The memory plan of ``train --dry-run``, one figure a line (within 80 columns)."""
    gib, size = (2**30, "GiB") if plan["total"] >= 2**30 else (2**20, "MiB")
    unit = "GPU" if plan["device_type"] == "cuda" else "process"
    world = plan["world_size"]
    where = f"1 {unit}" if world == 1 else f"{'FSDP' if plan['fsdp'] else 'DDP'} over {world}"
    low = plan["precision"].split("-")[0]  # bf16 | fp16 | fp32
    ckpt = plan["activation_checkpointing"]
    copies = f"{low} weights gathered" if plan["fsdp"] else f"{low} weight copies"
    if low == "fp32" and not plan["fsdp"]:
        copies = "weight copies (none in fp32)"
    rows = [
        ("weights (fp32)", plan["weights"], ""),
        ("gradients (fp32)", plan["gradients"], ""),
        ("AdamW moments", plan["optimizer"], ""),
        (copies, plan["low_precision_copies"], ""),
        ("activations", plan["activations_no_ckpt"], "" if ckpt else "← this run"),
        ("  with checkpointing", plan["activations_ckpt"], "← this run" if ckpt else ""),
    ]
    if world > 1:
        extra = "FSDP buffers" if plan["fsdp"] else "DDP extra (in-place buckets)"
        rows.append((extra, plan["data_parallel_extra"], ""))
    lines = [
        f"memory plan per {unit} ({where}, {plan['precision']}, micro batch "
        f"{plan['micro_batch_size']} × {plan['seq_len']:,} tokens):"
    ]
    lines += [f"  {label:<30}{n / gib:9.2f} {size}  {note}".rstrip() for label, n, note in rows]
    lines.append(f"  {'total':<30}{plan['total'] / gib:9.2f} {size}")
    if plan["device_memory"] is None:
        lines.append("  device memory unknown here: --device-memory 80GiB (or H100, ...) plans it")
        return lines
    verdict = "fits" if plan["fits"] else "does NOT fit"
    lines.append(
        f"  {'device':<30}{plan['device_memory'] / gib:9.2f} {size}  "
        f"(usable {plan['usable_memory'] / gib:.2f}): {verdict}"
    )
    if plan.get("suggestion"):
        lines += textwrap.wrap(
            f"to fit: {plan['suggestion']}", 78, initial_indent="  ", subsequent_indent="    "
        )
    return lines


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
