#!/usr/bin/env python
"""The seed's ``python scripts/tokenize_dataset.py --model NAME``: ``allllm tokenize`` under its old name.

A thin script for a checkout (it is not installed): every option of ``allllm
tokenize`` works, spelled with dashes or the seed's underscores, and the output
and exit codes are the verb's.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from allllm.cli import run_seed_command
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from allllm.cli import run_seed_command

if __name__ == "__main__":
    run_seed_command("tokenize", sys.argv[1:])
