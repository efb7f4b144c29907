"""Trained micro workspaces for the generate / eval / export / plot / demo tests.

Built in-process with the library functions the verbs call (tokenize, train),
once per test module: the micro model of ``train_helpers`` trains its ~30 steps
in a second or two.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from train_helpers import make_workspace


@contextlib.contextmanager
def inside(root: Path) -> Iterator[Path]:
    """Work in ``root`` (allllm's paths are relative to the workspace)."""
    previous = Path.cwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(previous)


def trained_workspace(
    root: Path, *, max_steps: int | None = None, n_files: int = 2, **overrides: Any
) -> Path:
    """A micro workspace (``make_workspace`` overrides), tokenized and trained once."""
    from allllm.config import load_config
    from allllm.data.tokenize.run import tokenize
    from allllm.train.options import QuietReporter, TrainOptions
    from allllm.train.session import train

    make_workspace(root, n_files=n_files, **overrides)
    with inside(root):
        cfg = load_config(model="micro")
        tokenize(cfg)
        result = train(cfg, TrainOptions(only_new=True, max_steps=max_steps), QuietReporter())
        assert result.exit_code == 0 and result.step > 0, result
    return root


def load_micro(root: Path, step: int | None = None) -> Any:
    """The trained micro model of ``root`` (a TrainedModel on the CPU)."""
    from allllm.config import load_config
    from allllm.use.trained import load_trained

    with inside(root):
        return load_trained(load_config(model="micro"), step, device="cpu")
