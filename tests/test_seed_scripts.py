"""The seed's own commands work from a checkout: ``python scripts/tokenize_dataset.py`` and
``python train.py`` are the ``tokenize`` and ``train`` verbs, underscores and all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from allllm.cli import seed_option_spelling
from train_helpers import cli, make_workspace

REPO = Path(__file__).resolve().parents[1]


def _script(root: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100"}
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=root, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def test_underscored_option_names_become_the_verbs_own() -> None:
    assert seed_option_spelling(["--model", "phi-2", "--only_new", "--max_steps=5"]) == [
        "--model", "phi-2", "--only-new", "--max-steps=5",
    ]  # fmt: skip
    # values are never touched, nor anything after "--"
    assert seed_option_spelling(["--shards", "my_file*", "--", "--a_b"]) == [
        "--shards", "my_file*", "--", "--a_b",
    ]  # fmt: skip


def test_the_seeds_commands_tokenize_and_train(tmp_path: Path) -> None:
    root = make_workspace(tmp_path, n_files=1)
    tok = _script(root, "scripts/tokenize_dataset.py", "--model", "micro", "--quiet")
    assert tok.returncode == 0, tok.stderr
    assert list((root / "data").glob("*.meta.json"))
    run = _script(root, "train.py", "--model", "micro", "--only_new", "--max_steps", "2", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["step"] == 2
    again = _script(root, "scripts/tokenize_dataset.py", "--model", "micro", "--quiet")
    assert again.returncode == 0 and not again.stderr  # nothing new: nothing re-tokenized
    assert len(list((root / "data").glob("*.meta.json"))) == 1


def test_the_scripts_show_the_verbs_help_and_errors(tmp_path: Path) -> None:
    for script, verb in (("train.py", "train"), ("scripts/tokenize_dataset.py", "tokenize")):
        ours = _script(tmp_path, script, "--help")
        theirs = cli(tmp_path, verb, "--help", env={"COLUMNS": "100"})
        assert ours.returncode == 0 and ours.stdout == theirs.stdout
        bad = _script(tmp_path, script, "--model", "nope")
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1
        assert "no config named 'nope'" in bad.stderr and "Traceback" not in bad.stderr
