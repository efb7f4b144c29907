"""The worked example of docs/forgetting.md: what run 2 makes the tiny model forget, with and
without anchor replay.

    python examples/forgetting.py /tmp/forgetting [--corpus ../shared/corpus/shakespeare]

Builds one workspace in DIR with two models of the tiny preset that share their shards:

- run 1 trains on 2 Shakespeare plays (190 KB), run 2 on 170 KB of Python docstrings
  (``allllm demo``'s corpus);
- ``plain`` trains only that; ``anchored`` also mixes in anchor replay
  (``anchor_fraction`` 0.25) from 3 other plays, tokenized into ``anchor/``;
- 2 more plays are ``data.eval_shards`` (a general held-out slice, disjoint from the anchor).

Every step is a real CLI call (``python -m allllm ...``). At the end it prints both forgetting
matrices, writes ``forgetting-plain.png`` and ``forgetting-anchored.png`` (``allllm plot
--forgetting``) and ``summary.json`` into DIR. About 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RUN1 = ["macbeth_gut.txt", "comedy_of_errors_gut.txt"]
ANCHOR = ["othello_gut.txt", "tempest_gut.txt", "twelfth_night_gut.txt"]
HELDOUT = ["romeo_and_juliet_gut.txt", "much_ado_about_nothing_gut.txt"]
DOCSTRING_BYTES = 170_000


def allllm(root: Path, *args: str) -> str:
    """Run one CLI command in the workspace; its stdout (a failure stops the example)."""
    proc = subprocess.run(
        [sys.executable, "-m", "allllm", *args], cwd=root, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"allllm {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def config(name: str, **changes: dict[str, Any]) -> dict[str, Any]:
    """The tiny preset as ``name``, with ``changes`` per section."""
    from allllm.config import load_config

    cfg = load_config(model="tiny").to_json_dict()
    cfg["name"], cfg["checkpoint_dir"] = name, f"checkpoints/{name}"
    cfg["data"]["pack_below_bytes"] = 0  # one shard per play: eval_shards picks plays
    cfg["data"]["eval_shards"] = "heldout-*"
    cfg["train"]["forgetting_eval_tokens"] = 32768  # half the default: the example stays short
    for section, values in changes.items():
        cfg[section].update(values)
    return cfg


def build(root: Path, corpus: Path) -> None:
    from allllm.demo.corpus import build_corpus

    if root.exists():
        shutil.rmtree(root)
    (root / "configs").mkdir(parents=True)
    (root / "data/raw").mkdir(parents=True)
    (root / "anchor_raw").mkdir()
    for name in RUN1:
        shutil.copy(corpus / name, root / "data/raw" / name)
    for name in HELDOUT:
        shutil.copy(corpus / name, root / "data/raw" / f"heldout-{name}")
    for name in ANCHOR:
        shutil.copy(corpus / name, root / "anchor_raw" / name)
    (root / "docstrings.txt").write_text(build_corpus([DOCSTRING_BYTES])[0])
    configs = {
        "plain": config("plain"),
        "anchored": config(
            "anchored", data={"anchor": "anchor/*.meta.json"}, train={"anchor_fraction": 0.25}
        ),
        "anchorsrc": config("anchorsrc", data={"dir": "anchor", "raw_path": "anchor_raw"}),
    }
    for name, cfg in configs.items():
        (root / "configs" / f"{name}.json").write_text(json.dumps(cfg, indent=2) + "\n")


def matrix_text(report: dict[str, Any]) -> list[str]:
    lines = []
    for row in report["matrix"]["rows"]:
        cells = ", ".join(f"run {i} {v:.3f}" for i, v in row["loss"].items())
        ev = row.get("eval_loss")
        lines.append(
            f"  after run {row['after_run']} (step {row['step']}): {cells}"
            + (f", eval shards {ev:.3f}" if ev is not None else "")
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--corpus", type=Path, default=Path("../shared/corpus/shakespeare"))
    args = parser.parse_args()
    corpus = args.corpus.resolve()
    if not all((corpus / n).is_file() for n in RUN1 + ANCHOR + HELDOUT):
        sys.exit(f"{corpus}: the Shakespeare plays of this example are not there (--corpus)")
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    root = args.dir.resolve()
    started = time.monotonic()
    build(root, corpus)
    allllm(root, "tokenize", "--model", "anchorsrc", "--quiet")
    allllm(root, "tokenize", "--model", "plain", "--quiet")
    timings: dict[str, float] = {}
    for run in (1, 2):
        if run == 2:
            shutil.copy(root / "docstrings.txt", root / "data/raw/docstrings.txt")
            allllm(root, "tokenize", "--model", "plain", "--quiet")
        for name in ("plain", "anchored"):
            t0 = time.monotonic()
            allllm(root, "train", "--model", name, "--only-new", "--quiet")
            timings[f"{name} run {run}"] = round(time.monotonic() - t0, 1)
    summary: dict[str, Any] = {"seconds": timings}
    for name in ("plain", "anchored"):
        status = json.loads(allllm(root, "status", "--model", name, "--json"))
        runs = [json.loads(x) for x in (root / f"checkpoints/{name}/runs.jsonl").open()]
        png = f"forgetting-{name}.png"
        report = json.loads(
            allllm(root, "plot", "--model", name, "--forgetting", "-o", png, "--json")
        )
        summary[name] = {
            "matrix": report["matrix"],
            "latest": status["forgetting"],
            "anchor": status["anchor"],
            "runs": [
                {k: r[k] for k in ("tokens", "steps", "replay_rows", "anchor_rows", "final_loss")}
                for r in runs
            ],
        }
        print(f"{name}: loss of the model after run j on the held-out text of run i")
        print("\n".join(matrix_text(report)))
    summary["total_seconds"] = round(time.monotonic() - started, 1)
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {root / 'summary.json'} and the two PNGs; {summary['total_seconds']} s in all")


if __name__ == "__main__":
    main()
