"""Run the real CLI entry point in-process and capture what it prints."""

from __future__ import annotations

import subprocess
import sys

import pytest

from allllm.cli import main


def cli_exit_code(args: list[str]) -> int:
    """The exit code of ``allllm ARGS``, exactly as ``main`` would exit (output left uncaptured)."""
    try:
        main(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``allllm ARGS``."""
    code = cli_exit_code(args)
    out, err = capsys.readouterr()
    return code, out, err


def heavy_imports_of(
    args: list[str], modules: tuple[str, ...] = ("torch", "transformers")
) -> list[str]:
    """Which of ``modules`` ``allllm ARGS`` imports, run in a fresh interpreter."""
    code = (
        "import sys; from allllm.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        f"print('heavy:', *[m for m in {modules!r} if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()[-1].split()[1:]  # after "heavy:"
