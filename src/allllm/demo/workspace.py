"""The ``allllm demo`` workspace: its folder, marker and file names, the demo's settings and config.

Kept apart from the steps (:mod:`allllm.demo.run`) because these are the rules
about the user's disk: what the demo may write, where, and what a rerun removes.

A DIR that exists, is not empty and has no ``.allllm-demo`` marker is refused
(never touch user files). Rerunning the demo in its own workspace starts over:
the demo's ``configs/tiny.json``, ``data/``, ``checkpoints/`` and ``loss.png``
are removed first, anything else there is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allllm.errors import ConfigError
from allllm.util.atomic import atomic_write_text

DEFAULT_DIR = "allllm-demo"
MARKER = ".allllm-demo"
MODEL = "tiny"
RAW_NAMES = ("stdlib-docs-1.txt", "stdlib-docs-2.txt")
DEMO_OUTPUTS = ("configs/tiny.json", "data", "checkpoints", "loss.png")


@dataclass
class DemoSettings:
    """Sizes and sampling of the demo; tests shrink ``part_bytes`` to run it in seconds."""

    part_bytes: tuple[int, int] = (450_000, 150_000)
    prompt: str = "def "
    max_new_tokens: int = 200
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 3
    # demo-friendly settings (the architecture stays the preset's): smaller batches at a higher
    # learning rate (more learning per token), a short warm-up, a validation loss every 25
    # steps so the plot has a curve, and enough validation rows to measure
    config: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "train": {
                "batch_size": 8,
                "micro_batch_size": 8,
                "lr": 0.003,
                "min_lr": 0.0003,
                "warmup_steps": 8,
                "eval_every": 25,
                "checkpoint_every": 100,
            },
            "data": {"val_fraction": 0.02},
        }
    )
    plot: bool = True


# -- the workspace --------------------------------------------------------------------------------


def prepare_workspace(directory: Path) -> bool:
    """Create the workspace or clear a previous demo's outputs; True when it was a rerun."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} exists and is not a folder", "choose another DIR")
    marker = directory / MARKER
    rerun = marker.is_file()
    if directory.is_dir() and not rerun and any(directory.iterdir()):
        raise ConfigError(
            f"{directory} exists and is not an allllm demo workspace (no {MARKER} file in it)",
            "the demo never writes into a folder with your files: give a new or empty DIR",
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name in DEMO_OUTPUTS if rerun else ():
            path = directory / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        atomic_write_text(
            marker,
            json.dumps(
                {"allllm_demo": 1, "note": "made by `allllm demo`; rerunning it starts over"}
            )
            + "\n",
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot prepare the demo workspace {directory}: {exc.strerror or exc}",
            "choose a DIR you can write to",
        ) from None
    return rerun


@contextlib.contextmanager
def inside(directory: Path) -> Iterator[None]:
    """Run in ``directory`` (allllm's paths are relative to the workspace, docs/design.md: workspace)."""
    previous = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(previous)


def write_demo_config(overrides: dict[str, dict[str, Any]]) -> Path:
    """``configs/tiny.json``: the tiny preset with the demo's settings (section -> keys)."""
    from allllm.config import CONFIG_DIR, find_config, parse_config

    data = find_config(model=MODEL).raw()  # the packaged preset (the local copy was removed)
    data["name"], data["checkpoint_dir"] = MODEL, f"checkpoints/{MODEL}"
    for section, values in overrides.items():
        data[section] = {**data.get(section, {}), **values}
    target = Path(CONFIG_DIR) / f"{MODEL}.json"
    parse_config(dict(data), str(target))  # the demo's settings must validate
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps(data, indent=2) + "\n")
    return target
