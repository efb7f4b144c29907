"""``allllm plot``: training and validation loss against tokens seen, one band per run.

The data comes from the checkpoint dir: ``metrics.jsonl`` (one line per
optimizer step) and ``runs.jsonl`` (one line per finished run). A resumed run
writes the steps it replays again, and ``--abandon-pending`` trains steps over,
so the lines are read as a timeline: a line for step ``s`` replaces every kept
line from step ``s`` on. Each step then counts once, with its latest values.

Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend
switch, no display needed); matplotlib is the optional ``plot`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allllm.errors import AllllmError, CheckpointError

PLOT_HINT = "pip install 'allllm[plot]' (or pip install matplotlib)"


@dataclass
class RunSpan:
    """One step-wise run on the curve: its steps and the tokens seen at its ends."""

    run_id: str
    start_step: int
    end_step: int
    start_tokens: int
    end_tokens: int
    shards: int | None  # None for a pending run (not in runs.jsonl yet)
    finished: bool


@dataclass
class LossCurves:
    """The points to draw, each step once."""

    steps: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    val_tokens: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    eval_tokens: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    runs: list[RunSpan] = field(default_factory=list)


def timeline(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metric lines in file order → one line per step, the latest; a step rewinds the ones after it."""
    kept: list[dict[str, Any]] = []
    for rec in records:
        step = rec.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        while kept and kept[-1]["step"] >= step:
            kept.pop()
        kept.append(rec)
    return kept


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _runs(kept: list[dict[str, Any]], logged: list[dict[str, Any]]) -> list[RunSpan]:
    tokens_at = {rec["step"]: int(rec.get("tokens") or 0) for rec in kept}
    by_id: dict[str, dict[str, Any]] = {}
    for line in logged:  # a run re-logged after a crash keeps its last line
        if isinstance(line.get("run_id"), str):
            by_id[line["run_id"]] = line
    spans: list[RunSpan] = []
    for run_id, line in by_id.items():
        start, end = int(line.get("start_step") or 0), int(line.get("end_step") or 0)
        if end not in tokens_at:  # metrics of that run were rewound away (an abandoned history)
            continue
        spans.append(
            RunSpan(
                run_id,
                start,
                end,
                tokens_at.get(start, 0),
                tokens_at[end],
                len(line.get("shards") or []),
                True,
            )
        )
    pending_steps: dict[str, list[int]] = {}
    for rec in kept:
        rid = rec.get("run_id")
        if isinstance(rid, str) and rid not in by_id:
            pending_steps.setdefault(rid, []).append(rec["step"])
    for rid, steps in pending_steps.items():
        start = min(steps) - 1
        spans.append(
            RunSpan(
                rid, start, max(steps), tokens_at.get(start, 0), tokens_at[max(steps)], None, False
            )
        )
    spans.sort(key=lambda s: s.start_step)
    return spans


def read_curves(checkpoint_dir: Path) -> LossCurves:
    """The curves of ``checkpoint_dir``'s ``metrics.jsonl`` and ``runs.jsonl``."""
    from allllm.train.metrics import METRICS_FILE, RUNS_FILE
    from allllm.util.jsonl import read_jsonl

    kept = timeline(read_jsonl(checkpoint_dir / METRICS_FILE))
    curves = LossCurves()
    for rec in kept:
        tokens = int(rec.get("tokens") or 0)
        loss = _number(rec.get("loss"))
        if loss is not None:
            curves.steps.append(rec["step"])
            curves.tokens.append(tokens)
            curves.loss.append(loss)
        for key, xs, ys in (
            ("val_loss", curves.val_tokens, curves.val_loss),
            ("eval_loss", curves.eval_tokens, curves.eval_loss),
        ):
            value = _number(rec.get(key))
            if value is not None:
                xs.append(tokens)
                ys.append(value)
    curves.runs = _runs(kept, read_jsonl(checkpoint_dir / RUNS_FILE))
    return curves


def _count(x: float, _pos: object = None) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:g}{unit}"
    return f"{x:g}"


def draw(curves: LossCurves, out: Path, title: str) -> Path:
    """Write the PNG (matplotlib's Agg canvas; an AllllmError names the extra when it is missing)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        raise AllllmError("plot needs matplotlib, which is not installed", PLOT_HINT) from None
    fig = Figure(figsize=(10, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, run in enumerate(curves.runs):
        ax.axvspan(run.start_tokens, run.end_tokens, color="0.93" if i % 2 else "0.86", lw=0)
        ax.axvline(run.start_tokens, color="0.55", ls="--", lw=0.8)
        label = f"run {i + 1}" + (
            f" · {run.shards} shard{'s' if run.shards != 1 else ''}"
            if run.finished
            else " · pending"
        )
        ax.annotate(
            label,
            xy=(run.start_tokens, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            fontsize=8,
            color="0.3",
        )
    ax.plot(curves.tokens, curves.loss, lw=0.9, color="tab:blue", label="train loss")
    if curves.val_loss:
        ax.plot(
            curves.val_tokens, curves.val_loss, "o-", ms=3.5, color="tab:orange", label="val loss"
        )
    if curves.eval_loss:
        ax.plot(
            curves.eval_tokens, curves.eval_loss, "s-", ms=3.5, color="tab:green", label="eval loss"
        )
    ax.xaxis.set_major_formatter(FuncFormatter(_count))
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return save_png(fig, out)


def save_png(fig: Any, out: Path) -> Path:
    """Lay out and write a figure as a PNG (an unwritable path is a one-line error)."""
    fig.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
    except OSError as exc:
        raise AllllmError(
            f"cannot write {out}: {exc.strerror or exc}", "choose another --out path"
        ) from None
    return out


def plot_losses(checkpoint_dir: Path, out: str | Path, *, name: str) -> tuple[Path, LossCurves]:
    """Plot the losses logged in ``checkpoint_dir`` to the PNG ``out``."""
    curves = read_curves(checkpoint_dir)
    if not curves.loss:
        raise CheckpointError(
            f"no training metrics in {checkpoint_dir / 'metrics.jsonl'}",
            f"train first: allllm train --model {name} --only-new",
        )
    last = curves.steps[-1]
    title = f"{name}: loss vs tokens seen ({len(curves.runs)} run(s), step {last})"
    return draw(curves, Path(out), title), curves
