"""The CLI shell: help, version, config verbs, exit codes and one-line errors (docs/design.md, exit codes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from allllm import __version__
from cli_helpers import heavy_imports_of
from cli_helpers import run_cli as run


def test_help_lists_verbs(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for verb in ("config", "tokenizer"):
        assert verb in out


def test_version(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.strip() == f"allllm {__version__}"


def test_config_list_and_show(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["config", "list", "--json"], capsys)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["phi-2"]["parameters"] == 2_779_683_840
    assert rows["tiny"]["tokenizer"] == "byte"
    code, out, _ = run(["config", "show", "--model", "phi-2", "--json"], capsys)
    assert code == 0
    shown = json.loads(out)
    assert shown["parameters"] == 2_779_683_840
    assert shown["config"]["model"]["partial_rotary_factor"] == 0.4
    code, out, _ = run(["config", "show", "--model", "tiny"], capsys)
    assert code == 0 and "3.29M" in out


def test_config_init_then_show(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["config", "init", "mine", "--from", "tiny"], capsys)
    assert code == 0 and "configs/mine.json" in out
    code, out, _ = run(["config", "show", "--model", "mine", "--json"], capsys)
    assert json.loads(out)["config"]["checkpoint_dir"] == "checkpoints/mine"
    code, _, err = run(["config", "init", "mine", "--from", "tiny"], capsys)
    assert code == 1 and err.count("\n") == 1 and "already exists" in err


def test_user_error_is_one_line_exit_1(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workspace / "configs").mkdir()
    (workspace / "configs" / "bad.json").write_text('{"model": {"vocab_size": 300,}}')
    code, _, err = run(["config", "show", "--model", "bad"], capsys)
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "line 1, column 30" in err
    assert "Traceback" not in err


def test_broken_local_config_is_listed_not_fatal(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workspace / "configs").mkdir()
    (workspace / "configs" / "bad.json").write_text("{")
    code, out, _ = run(["config", "list", "--json"], capsys)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert "invalid JSON" in rows["bad"]["error"]


def test_usage_errors_exit_2(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(["config", "bogus"], capsys)
    assert code == 2
    code, _, _ = run(["config", "show", "--no-such-option"], capsys)
    assert code == 2


def test_subprocess_error_has_no_traceback_unless_debug(workspace: Path) -> None:
    env = {**os.environ, "ALLLLM_DEBUG": ""}
    cmd = [sys.executable, "-m", "allllm", "config", "show", "--model", "missing"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: no config named 'missing'")
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "ALLLLM_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_light_verbs_do_not_import_torch(workspace: Path) -> None:
    assert heavy_imports_of(["config", "list"]) == []
