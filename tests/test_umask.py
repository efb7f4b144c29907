"""Every file and folder allllm writes honours the umask, written atomically or not.

``tempfile.mkstemp`` creates 0600 files, which teammates on a shared machine cannot
read while every other file is 0644 under umask 022. allllm reads the umask once at
import, so each check runs in a fresh interpreter started under that umask. The
machine may run as root, which reads anything: the checks are on ``st_mode``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import MICRO_CONFIG

TESTS = Path(__file__).resolve().parent
UMASKS = [0o022, 0o077]

ATOMIC_SCRIPT = """
import os, sys
from allllm.util.atomic import atomic_write_bytes, atomic_write_text
root = sys.argv[1]
atomic_write_text(os.path.join(root, "new.txt"), "new\\n")
atomic_write_bytes(os.path.join(root, "new.bin"), b"\\0\\1")
old = os.path.join(root, "old.txt")
with open(old, "w") as fh:
    fh.write("written 0600 by an older allllm\\n")
os.chmod(old, 0o600)
atomic_write_text(old, "replaced\\n")
"""

# The whole workflow in one interpreter: config init, tokenize, a train of the micro
# model (~30 steps: checkpoints and seen_datasets.json), export, a BPE tokenizer folder.
FLOW_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from train_helpers import make_workspace
root = Path(sys.argv[1])
root.mkdir()
make_workspace(root)
tok = json.loads(sys.argv[3])
(root / "configs" / "tok.json").write_text(json.dumps(tok))
import os
os.chdir(root)
from allllm.cli import main
for args in (
    ["config", "init", "mine", "--from", "tiny"],
    ["tokenize", "--model", "micro"],
    ["train", "--model", "micro", "--only-new", "--device", "cpu"],
    ["export", "--model", "micro", "--out", "exported/micro"],
    ["tokenizer", "train", "--model", "tok", "--quiet"],
):
    try:
        main(args)
    except SystemExit as exc:
        sys.exit(f"allllm {' '.join(args)} exited {exc.code}")
"""


def _run_under(umask: int, script: str, *args: str) -> subprocess.CompletedProcess:
    """``python -c SCRIPT ARGS`` in a fresh interpreter that sets ``umask`` before any import."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALLLLM_DEBUG": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", f"import os\nos.umask({umask:#o})\n{script}", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return proc


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _wrong_modes(root: Path, umask: int) -> list[str]:
    """Every file under ``root`` not ``0o666 & ~umask`` and folder not ``0o777 & ~umask``."""
    want_file, want_dir = 0o666 & ~umask, 0o777 & ~umask
    wrong = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = Path(dirpath, name)
            if _mode(path) != want_dir:
                wrong.append(f"{path.relative_to(root)}/ {oct(_mode(path))}")
        for name in filenames:
            path = Path(dirpath, name)
            if _mode(path) != want_file:
                wrong.append(f"{path.relative_to(root)} {oct(_mode(path))}")
    return wrong


@pytest.mark.parametrize("umask", UMASKS, ids=oct)
def test_atomic_writer_files_get_the_umask_mode(tmp_path: Path, umask: int) -> None:
    _run_under(umask, ATOMIC_SCRIPT, str(tmp_path))
    want = 0o666 & ~umask
    modes = {p.name: _mode(p) for p in tmp_path.iterdir()}
    # new files, and a 0600 file replaced (it heals), with no temporary left behind
    assert modes == {"new.txt": want, "new.bin": want, "old.txt": want}
    assert (tmp_path / "old.txt").read_text() == "replaced\n"


@pytest.mark.parametrize("umask", UMASKS, ids=oct)
def test_every_file_of_the_workflow_gets_the_umask_mode(tmp_path: Path, umask: int) -> None:
    root = tmp_path / "ws"
    tok = {**MICRO_CONFIG, "name": "tok", "tokenizer": {"backend": "hf", "path": "./tokenizers/t"}}
    _run_under(umask, FLOW_SCRIPT, str(root), str(TESTS), json.dumps(tok))
    step = sorted((root / "checkpoints" / "micro").glob("step-*"))
    assert step, "no checkpoint was saved"
    expected = [
        root / "configs" / "mine.json",
        root / "checkpoints" / "micro" / "seen_datasets.json",
        step[-1] / "model.safetensors",
        root / "exported" / "micro" / "model.safetensors",
        root / "exported" / "micro" / "config.json",
        root / "tokenizers" / "t" / "tokenizer.json",
        root / "tokenizers" / "t" / "tokenizer_config.json",
    ]
    expected += list((root / "data").glob("*.meta.json"))
    assert [str(p) for p in expected if not p.is_file()] == []
    assert len(expected) == 9  # both shards' meta files
    assert _wrong_modes(root, umask) == []
