"""``allllm plot --forgetting``: the forgetting matrix as a heatmap, and one curve per run's data.

Left: rows "model after run j", columns "held-out text of run i" (and the eval
shards), each cell the loss, annotated. Right: for each run i, its loss after
every later run — a curve that rises is text the model is forgetting. Read from
``evals.jsonl`` and the latest checkpoint's frozen subsets (no torch, nothing
evaluated); matplotlib's Agg canvas, as ``allllm plot``.
"""

from __future__ import annotations

import math
from pathlib import Path

from allllm.errors import AllllmError, CheckpointError
from allllm.use.forgetting import Matrix, build_matrix, read_rows
from allllm.use.plot import PLOT_HINT, save_png


def read_matrix(checkpoint_dir: Path) -> Matrix:
    """The stored matrix of the latest checkpoint's lineage."""
    from allllm.train.checkpoint import checkpoint_summary

    summary = checkpoint_summary(checkpoint_dir) or {}
    return build_matrix(summary.get("eval_subsets") or [], read_rows(checkpoint_dir))


def draw_matrix(matrix: Matrix, out: Path, title: str) -> Path:
    """Write the PNG (an AllllmError names the extra when matplotlib is missing)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise AllllmError("plot needs matplotlib, which is not installed", PLOT_HINT) from None
    rows = matrix.rows
    cols = [r.run for r in matrix.runs if r.rows]
    has_eval = bool(matrix.eval_loss)
    labels = [f"run {i}" for i in cols] + (["eval shards"] if has_eval else [])
    grid = [
        [matrix.loss[j].get(i, math.nan) for i in cols]
        + ([matrix.eval_loss.get(j, math.nan)] if has_eval else [])
        for j in rows
    ]
    fig = Figure(figsize=(12, 5.0), dpi=110)
    FigureCanvasAgg(fig)
    heat, curves = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    image = heat.imshow(grid, cmap="viridis_r", aspect="auto")
    fig.colorbar(image, ax=heat, label="loss (nats / token)")
    finite = [v for line in grid for v in line if not math.isnan(v)]
    middle = (min(finite) + max(finite)) / 2 if finite else 0.0
    for y, line in enumerate(grid):
        for x, value in enumerate(line):
            if not math.isnan(value):
                color = "white" if value > middle else "black"
                heat.text(x, y, f"{value:.3f}", ha="center", va="center", fontsize=8, color=color)
    heat.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    heat.set_yticks(range(len(rows)), [f"after run {j}" for j in rows])
    heat.set_xlabel("held-out text of")
    heat.set_title("loss of the model after run j on the text of run i")
    for i in cols:
        xs = [j for j in rows if i in matrix.loss[j]]
        curves.plot(xs, [matrix.loss[j][i] for j in xs], "o-", ms=4, label=f"text of run {i}")
    if has_eval:
        xs = [j for j in rows if j in matrix.eval_loss]
        curves.plot(xs, [matrix.eval_loss[j] for j in xs], "s--", ms=4, color="0.3",
                    label="eval shards")  # fmt: skip
    curves.set_xticks(rows, [str(j) for j in rows])
    curves.set_xlabel("after run")
    curves.set_ylabel("loss (nats / token)")
    curves.set_title("each run's text, run after run")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8)
    fig.suptitle(title)
    return save_png(fig, out)


def plot_forgetting(checkpoint_dir: Path, out: str | Path, *, name: str) -> tuple[Path, Matrix]:
    """Plot the stored forgetting matrix of ``checkpoint_dir`` to the PNG ``out``."""
    matrix = read_matrix(checkpoint_dir)
    if not matrix.rows:
        raise CheckpointError(
            f"no forgetting matrix row in {checkpoint_dir / 'evals.jsonl'} yet",
            f"complete a run (allllm train --model {name} --only-new) or fill rows in with "
            f"allllm eval --model {name} --by-run --all-checkpoints",
        )
    title = f"{name}: forgetting matrix ({len(matrix.rows)} run(s) evaluated)"
    return draw_matrix(matrix, Path(out), title), matrix
