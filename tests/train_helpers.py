"""Small, fast workspaces for training tests: a 2-layer width-32 model on generated text."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

MICRO_CONFIG: dict[str, Any] = {
    "name": "micro",
    "model": {
        "arch": "phi",
        "vocab_size": 264,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_layers": 2,
        "num_heads": 2,
        "max_position_embeddings": 64,
        "partial_rotary_factor": 0.5,
    },
    "tokenizer": {"backend": "byte"},
    "data": {
        "raw_path": "data/raw",
        "dir": "data",
        "seq_len": 32,
        "pack_below_bytes": 0,
        "val_fraction": 0.05,
    },
    "train": {
        "micro_batch_size": 4,
        "batch_size": 8,
        "lr": 0.003,
        "min_lr": 0.0003,
        "warmup_steps": 2,
        "checkpoint_every": 4,
        "keep_checkpoints": 2,
        "eval_every": 4,
        "seed": 7,
    },
}

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there been one all we their has would when if so no what "
    "river stone light morning garden window letter winter market silver bridge quiet distant"
).split()


def text(seed: int, n_words: int = 600) -> str:
    """Deterministic prose-like text with paragraphs."""
    rng = random.Random(seed)
    out, line = [], []
    for i in range(n_words):
        line.append(rng.choice(WORDS))
        if rng.random() < 0.08:
            out.append(" ".join(line).capitalize() + ".")
            line = []
        if i % 97 == 96:
            out.append("")
    out.append(" ".join(line))
    return "\n".join(out) + "\n"


def make_workspace(root: Path, n_files: int = 2, words: int = 600, **overrides: Any) -> Path:
    """configs/micro.json plus ``n_files`` raw text files in data/raw."""
    cfg = json.loads(json.dumps(MICRO_CONFIG))
    for section, values in overrides.items():
        if isinstance(values, dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "configs" / "micro.json").write_text(json.dumps(cfg, indent=2))
    raw = root / "data" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        add_raw(root, f"part{i}.txt", seed=i, words=words)
    return root


def add_raw(root: Path, name: str, seed: int, words: int = 600) -> Path:
    path = root / "data" / "raw" / name
    path.write_text(text(seed, words))
    return path


def cli(
    root: Path,
    *args: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run ``python -m allllm ARGS`` in ``root`` (one thread, as bitwise CPU resume needs)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "ALLLLM_DEBUG": "", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "allllm", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"allllm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def weights(root: Path, name: str = "micro") -> dict[str, Any]:
    """The tensors of the latest complete checkpoint."""
    from allllm.train.checkpoint import latest_checkpoint, load_model_state

    ref = latest_checkpoint(root / "checkpoints" / name)
    assert ref is not None, "no checkpoint"
    return load_model_state(ref)


def same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def seen(root: Path, name: str = "micro") -> dict[str, Any]:
    return json.loads((root / "checkpoints" / name / "seen_datasets.json").read_text())["shards"]
