"""Hugging Face Hub loads without network: one fast attempt, then one line (or the unverified path).

huggingface_hub reads ``HF_ENDPOINT`` / ``HF_HOME`` when it is imported, so the
CLI runs in a subprocess pointed at a closed local port (``127.0.0.1:9``) with a
fresh, empty HF cache. A small ``-c`` wrapper counts the connection attempts to
that port: counting, not timing, keeps these tests stable on a loaded machine.
Before this was fixed, one tokenizer load made 19 attempts and printed 22 retry
warnings ("... thrown while requesting HEAD", "Retrying in 8s") over ~50 s.
"""

from __future__ import annotations

import http.server
import importlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from allllm.util.hub import is_connection_error
from shard_factory import random_rows, tokenizer_info, write_shard
from train_helpers import make_workspace

pytest.importorskip("transformers", reason="Hub loading goes through transformers")

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, connecting is refused at once
HUB_TOKENIZER = {"backend": "hf", "path": "microsoft/phi-2"}
MAX_CONNECTS = 3  # the probe, and huggingface_hub's once-per-process agent-registry fetch

# logs every connect to port 9 to $ALLLLM_TEST_CONNECTS, then runs what follows it
COUNTING = """
import os, runpy, socket, sys
_connect = socket.socket.connect
def _counted(self, address):
    if isinstance(address, tuple) and len(address) >= 2 and address[1] == 9:
        with open(os.environ["ALLLLM_TEST_CONNECTS"], "a") as fh:
            fh.write(repr(address) + "\\n")
    return _connect(self, address)
socket.socket.connect = _counted
"""
CLI_MAIN = """
sys.argv[0] = "allllm"
runpy.run_module("allllm", run_name="__main__", alter_sys=True)
"""
# set by whoever runs the tests; each would change where or whether the Hub is asked
_HUB_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")


def _run_python(
    root: Path, main: str, *args: str, endpoint: str = CLOSED, hf_home: Path | None = None
) -> tuple[subprocess.CompletedProcess, int]:
    """``main`` (Python source) in ``root`` with the Hub at ``endpoint``: result, connects to :9."""
    log = root / "connects.log"
    log.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in _HUB_ENV}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(hf_home or root / "hf-home"),
        ALLLLM_TEST_CONNECTS=str(log),
        ALLLLM_DEBUG="",
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        [sys.executable, "-c", COUNTING + main, *args],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    connects = len(log.read_text().splitlines()) if log.exists() else 0
    return proc, connects


def _run(root: Path, *args: str, endpoint: str = CLOSED) -> tuple[subprocess.CompletedProcess, int]:
    """``allllm ARGS`` in ``root``, as ``_run_python`` runs code."""
    return _run_python(root, CLI_MAIN, *args, endpoint=endpoint)


def _stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def _hub_shards(root: Path, n: int = 2) -> None:
    """Shards as ``allllm tokenize`` made them with microsoft/phi-2 on a machine with network."""
    tok = tokenizer_info(backend="hf", path="microsoft/phi-2")
    for i in range(n):
        rows = random_rows(20, 32, last_row_len=10, seed=i)
        write_shard(root / "data", rows, seq_len=32, source=f"part{i}", tokenizer=tok)


def test_tokenize_offline_fails_at_once_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "a.txt").write_text("some text\n")
    proc, connects = _run(tmp_path, "tokenize", "--model", "phi-2")
    assert proc.returncode == 1, proc.stderr
    lines = _stderr_lines(proc)
    assert len(lines) == 1, proc.stderr  # no "Retrying in 1s" lines, no traceback
    line = lines[0]
    assert line.startswith("error: cannot load Hugging Face tokenizer 'microsoft/phi-2'")
    assert "could not be fetched" in line and "cannot be reached" in line
    assert str(tmp_path / "hf-home" / "hub") in line
    assert "tokenizer.path" in line and "HF_HOME" in line
    assert connects <= MAX_CONNECTS


def test_train_offline_compares_shards_by_backend_and_path(tmp_path: Path) -> None:
    root = make_workspace(tmp_path, n_files=0, tokenizer=HUB_TOKENIZER)
    _hub_shards(root)
    proc, connects = _run(root, "train", "--model", "micro", "--only-new", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "2 shard(s)" in proc.stdout
    lines = _stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("warning: tokenizer cannot be loaded here (cannot load Hugging")
    assert "could not be fetched" in lines[0]
    assert lines[0].endswith("shards are compared by tokenizer backend and path only")
    assert connects <= MAX_CONNECTS


@pytest.mark.slow
def test_train_offline_trains_on_shards_made_with_a_hub_tokenizer(tmp_path: Path) -> None:
    root = make_workspace(tmp_path, n_files=0, tokenizer=HUB_TOKENIZER)
    _hub_shards(root)
    proc, connects = _run(root, "train", "--model", "micro", "--only-new")
    assert proc.returncode == 0, proc.stderr
    assert any((root / "checkpoints" / "micro").glob("step-*"))
    assert "Retrying" not in proc.stderr and connects <= MAX_CONNECTS


def test_init_from_hub_offline_is_one_line_and_the_hub_is_asked_once(tmp_path: Path) -> None:
    root = make_workspace(tmp_path, n_files=0, tokenizer=HUB_TOKENIZER)
    _hub_shards(root)
    cfg = json.loads((root / "configs" / "micro.json").read_text())
    cfg["model"]["init_from"] = "microsoft/phi-2"
    (root / "configs" / "micro.json").write_text(json.dumps(cfg))
    proc, connects = _run(root, "train", "--model", "micro", "--only-new")
    assert proc.returncode == 1, proc.stderr
    lines = _stderr_lines(proc)
    assert len(lines) == 2, proc.stderr  # the tokenizer warning, then the error
    error = lines[-1]
    assert error.startswith("error: microsoft/phi-2: not a local directory")
    assert "set model.init_from to DIR" in error and "HF_HOME" in error
    assert connects <= MAX_CONNECTS  # the tokenizer's probe answered for init_from too


def test_hub_checkpoint_offline_comes_from_the_hf_cache_else_one_line(tmp_path: Path) -> None:
    hf_home = tmp_path / "hf-home"
    repo = hf_home / "hub" / "models--microsoft--phi-2"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"")
    main = (
        "from allllm.errors import CheckpointError\n"
        "from allllm.hf.locate import resolve_checkpoint\n"
        "print(resolve_checkpoint('microsoft/phi-2'))\n"
        "try:\n"
        "    resolve_checkpoint('microsoft/not-cached')\n"
        "except CheckpointError as exc:\n"
        "    print(exc.one_line())\n"
    )
    proc, connects = _run_python(tmp_path, main, hf_home=hf_home)
    assert proc.returncode == 0, proc.stderr
    cached, missing = proc.stdout.splitlines()
    assert cached == str(snapshot)
    assert missing.startswith("microsoft/not-cached: not a local directory")
    assert str(hf_home / "hub") in missing and "HF_HOME" in missing
    assert "Retrying" not in proc.stderr and connects <= MAX_CONNECTS


class _NoSuchRepo(http.server.BaseHTTPRequestHandler):
    """Answers every request as the Hub answers for a repository that does not exist."""

    def _answer(self) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def answering_hub() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoSuchRepo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_hub_that_answers_is_not_offline(tmp_path: Path, answering_hub: str) -> None:
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "a.txt").write_text("some text\n")
    proc, _ = _run(tmp_path, "tokenize", "--model", "phi-2", endpoint=answering_hub)
    assert proc.returncode == 1, proc.stderr
    lines = _stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert "cannot be reached" not in lines[0] and "not a valid model identifier" in lines[0]
    assert "check the Hub id" in lines[0]


def _transport_error() -> BaseException:
    """A refused connection as the installed huggingface_hub's HTTP library raises it."""
    for module, name in (("httpx2", "ConnectError"), ("httpx", "ConnectError")):
        try:
            return getattr(importlib.import_module(module), name)("[Errno 111] Connection refused")
        except ImportError:
            continue
    requests = pytest.importorskip("requests")
    return requests.ConnectionError("[Errno 111] Connection refused")


class _Answered(Exception):
    """Any error that carries an HTTP response (huggingface_hub's HfHubHTTPError does)."""

    response = "HTTP 500"


def _raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


def test_which_errors_mean_the_hub_was_not_reached() -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    refused = _transport_error()
    assert is_connection_error(refused)
    assert is_connection_error(ConnectionRefusedError(111, "Connection refused"))
    # transformers' OSError("We couldn't connect ...") from the hub's LocalEntryNotFoundError
    wrapped = _raised_from(OSError("We couldn't connect"), LocalEntryNotFoundError("not cached"))
    assert is_connection_error(wrapped)
    # the library also says "could not connect" when the Hub answered 5xx: that is not offline
    answered = _raised_from(LocalEntryNotFoundError("not cached"), _Answered("500"))
    assert not is_connection_error(answered)
    assert not is_connection_error(ValueError("a bug, not the network"))
    assert not is_connection_error(OSError("no such file"))
