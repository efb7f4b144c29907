"""How long ``allllm demo`` takes here (the figure README states), and its train phase.

Runs the real ``allllm demo`` in fresh temporary folders, one after the other
(two heavy jobs at once slow torch several-fold), and prints each run's wall time,
its ``train`` phase (the "done: ... Ns" line the demo prints), and the median.

With ``--against REV`` it also times ``allllm train --only-new --max-steps N`` on the
demo's own workspace under this checkout and under git revision REV (a temporary
worktree), interleaved, so a slower demo can be told apart from a slower machine.

    python benchmarks/bench_demo.py [--repeats 3] [--against REV] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine_description

REPO = Path(__file__).resolve().parents[1]


def _demo(folder: Path) -> tuple[float, float | None]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "allllm", "demo", str(folder / "ws")],
        capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "100"},
    )  # fmt: skip
    wall = time.perf_counter() - start
    found = re.search(r"done: .*?, (\d+)s,", proc.stdout)
    return wall, float(found.group(1)) if found else None


def _train(workspace: Path, src: Path, steps: int) -> tuple[float, float]:
    shutil.rmtree(workspace / "checkpoints", ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "allllm", "train", "--model", "tiny", "--only-new",
         "--max-steps", str(steps), "--quiet"],
        cwd=workspace, env=env, check=True, capture_output=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    last = (workspace / "checkpoints/tiny/metrics.jsonl").read_text().splitlines()[-1]
    return wall, float(json.loads(last)["tokens_per_s"])


def _strip_new_keys(workspace: Path, keys: tuple[str, ...]) -> None:
    """An older revision refuses keys it does not know: drop them from the copy it reads."""
    path = workspace / "configs/tiny.json"
    cfg = json.loads(path.read_text())
    for key in keys:
        cfg["train"].pop(key, None)
    path.write_text(json.dumps(cfg, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--against", help="git revision to compare the train phase with")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    print(machine_description())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        walls, trains = [], []
        for i in range(args.repeats):
            wall, train_s = _demo(root / f"demo{i}")
            walls.append(wall)
            trains.append(train_s)
            print(f"demo run {i + 1}: {wall:.1f} s (train phase {train_s} s)", flush=True)
        print(f"demo median: {statistics.median(walls):.1f} s of {len(walls)} runs")
        if not args.against:
            return
        worktree = root / "against"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(worktree),
             args.against],
            check=True,
        )  # fmt: skip
        try:
            ours, theirs = root / "ours", root / "theirs"
            for dest in (ours, theirs):
                shutil.copytree(root / "demo0/ws/configs", dest / "configs")
                shutil.copytree(root / "demo0/ws/data", dest / "data")
            _strip_new_keys(theirs, ("adam_eps", "max_skipped_steps"))
            rows: dict[str, list[tuple[float, float]]] = {"this checkout": [], args.against: []}
            for _ in range(args.repeats):
                rows["this checkout"].append(_train(ours, REPO / "src", args.steps))
                rows[args.against].append(_train(theirs, worktree / "src", args.steps))
            for name, runs in rows.items():
                med_wall = statistics.median(w for w, _ in runs)
                med_tok = statistics.median(t for _, t in runs)
                print(f"train {args.steps} steps, {name}: {med_wall:.1f} s, {med_tok:,.0f} tok/s")
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
                check=False,
            )  # fmt: skip


if __name__ == "__main__":
    main()
