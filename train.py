#!/usr/bin/env python
"""The seed's ``python train.py --model NAME --only_new``: ``allllm train`` under its old name.

A thin script for a checkout (it is not installed): every option of ``allllm
train`` works, spelled with dashes or the seed's underscores (``--only_new``),
and the output and exit codes are the verb's.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from allllm.cli import run_seed_command
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    from allllm.cli import run_seed_command

if __name__ == "__main__":
    run_seed_command("train", sys.argv[1:])
