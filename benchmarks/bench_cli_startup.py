"""How fast do the light verbs answer? (issue 2: `allllm --help` and `config list` well under 1 s)

Runs each command N times in fresh processes and prints the median wall time,
next to the bare interpreter start-up (`python -c pass`) measured in the same
run as the baseline. Usage: python benchmarks/bench_cli_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

from _machine import machine_description

COMMANDS = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "allllm --help": [sys.executable, "-m", "allllm", "--help"],
    "allllm --version": [sys.executable, "-m", "allllm", "--version"],
    "allllm config list": [sys.executable, "-m", "allllm", "config", "list"],
    "allllm config show --model phi-2": [
        sys.executable,
        "-m",
        "allllm",
        "config",
        "show",
        "--model",
        "phi-2",
    ],
    "import torch (for contrast)": [sys.executable, "-c", "import torch"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(args.runs):  # interleaved, so drift hits every command alike
            for name, cmd in COMMANDS.items():
                t0 = time.perf_counter()
                subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["python -c pass (baseline)"])
    print(f"machine: {machine_description()}")
    print(f"{'command':40s} {'median s':>9s} {'over python':>12s}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:40s} {med:9.3f} {med - base:+12.3f}")


if __name__ == "__main__":
    main()
