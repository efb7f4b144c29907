"""Run the real CLI entry point in-process and capture what it prints."""

from __future__ import annotations

import pytest

from allllm.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``allllm ARGS``, exactly as ``main`` would exit."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
