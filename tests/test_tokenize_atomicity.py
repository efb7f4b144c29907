"""A crash, kill or Ctrl-C at any moment leaves nothing a scan could take for a shard.

The journal (docs/design.md: shards) lists every file a shard may create before the first
byte is written; the meta is renamed into place last; scans ignore journaled
stems; the next tokenize removes journaled leftovers — and only those — and then
produces exactly what an uninterrupted run would have.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from allllm.config import Config, TokenizerConfig
from allllm.data.registry import scan_shards
from allllm.data.tokenize import journal
from allllm.data.tokenize import write as shard_writer
from allllm.data.tokenize.run import tokenize
from allllm.data.tokenize.summary import NoProgress
from allllm.data.tokenize.write import ShardWriter
from allllm.errors import DataError
from allllm.tokenizer.manager import TokenizerManager
from tokenize_helpers import (
    check_all,
    make_config,
    real_text,
    shard_stems,
    snapshot,
    spec_for,
    write_raw,
)

BYTE = TokenizerConfig(backend="byte")


@pytest.fixture()
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    return ws


@pytest.fixture()
def tok() -> TokenizerManager:
    return TokenizerManager.from_config(BYTE)


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs, not even cleanup."""


def _raw_files() -> None:
    write_raw("a.txt", real_text(3000, start=1))
    write_raw("b.txt", real_text(5000, start=2))


def _reference(root: Path) -> dict[str, list]:
    """shard_id -> rows of an uninterrupted run on the same raw files, in ``root``."""
    shutil.copytree(Path("data/raw"), root / "data" / "raw")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        cfg = make_config()
        tokenize(cfg)
        shards = check_all(cfg.data_dir, cfg, TokenizerManager.from_config(BYTE))
    finally:
        os.chdir(cwd)
    return {s.meta.shard_id: [r.tolist() for r in s.rows] for s in shards}


def _result(cfg: Config, tok: TokenizerManager) -> dict[str, list]:
    return {
        s.meta.shard_id: [r.tolist() for r in s.rows] for s in check_all(cfg.data_dir, cfg, tok)
    }


def _crash_writer(monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    """Make the second shard's writer die at ``point`` without cleaning up."""
    monkeypatch.setattr(ShardWriter, "abort", lambda self: None)
    real_write = shard_writer._HashingFile.write
    real_meta = ShardWriter._write_meta
    real_end = journal.end
    real_fault = shard_writer.fault_point

    def second_shard(stem: str) -> bool:
        return stem.startswith("b.")

    def fault(name: str) -> None:  # tokenize.docs: every file renamed, the meta not yet
        if point == "docs" and name == "tokenize.docs" and list(Path("data").glob("b.*.docs")):
            raise Crash
        real_fault(name)

    def write(self, data):  # type: ignore[no-untyped-def]
        real_write(self, data)
        if point == "data" and self.path.name.startswith(".b."):
            raise Crash

    def write_meta(self, meta):  # type: ignore[no-untyped-def]
        if point == "before-meta" and second_shard(self.stem):
            raise Crash
        real_meta(self, meta)

    def end(data_dir, stem):  # type: ignore[no-untyped-def]
        if point == "before-journal-end" and second_shard(stem):
            raise Crash
        real_end(data_dir, stem)

    monkeypatch.setattr(shard_writer._HashingFile, "write", write)
    monkeypatch.setattr(ShardWriter, "_write_meta", write_meta)
    monkeypatch.setattr(shard_writer.journal, "end", end)
    monkeypatch.setattr(shard_writer, "fault_point", fault)


@pytest.mark.parametrize("point", ["data", "docs", "before-meta", "before-journal-end"])
def test_a_crash_at_any_point_leaves_no_shard_and_the_rerun_finishes(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tok, point: str
) -> None:
    _raw_files()
    cfg = make_config()
    reference = _reference(tmp_path / "reference")
    Path("data").mkdir(exist_ok=True)
    Path("data/notes.txt").write_text("not ours")
    Path("data/.b.cached.64.20240101_000000.jsonl.tmp").write_text("not journaled: not ours")
    with monkeypatch.context() as patch:
        _crash_writer(patch, point)
        with pytest.raises(Crash):
            tokenize(cfg)
    scan = scan_shards(cfg.data_dir, spec_for(cfg, tok))
    (crashed,) = scan.journaled
    assert crashed.startswith("b.cached.64.")
    assert [e.name for e in scan.shards] == [s for s in shard_stems(cfg.data_dir) if s != crashed]
    assert all(e.state == "new" for e in scan.shards)  # a.txt's shard, complete and valid
    left = sorted(p.name for p in cfg.data_dir.iterdir() if crashed in p.name)
    assert left  # the crash left files behind ...
    summary = tokenize(cfg)  # ... which the next run removes, and only those
    assert summary.cleaned == [crashed]
    shards = check_all(cfg.data_dir, cfg, tok)
    owned = {f.name for s in shards for f in s.meta.files.values()}
    owned |= {f"{s.stem}.meta.json" for s in shards}
    assert all(s.meta.documents for s in shards)
    owned |= {s.meta.documents.name for s in shards if s.meta.documents}
    not_ours = {"notes.txt", ".b.cached.64.20240101_000000.jsonl.tmp"}
    assert {p.name for p in cfg.data_dir.iterdir()} == owned | not_ours | {"raw", ".allllm"}
    assert summary.up_to_date == ["data/raw/a.txt"] and len(summary.shards) == 1
    assert journal.journaled_stems(cfg.data_dir) == set()
    assert _result(cfg, tok) == reference


def test_ctrl_c_removes_the_shard_being_written(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, tok
) -> None:
    _raw_files()
    cfg = make_config()
    tokenize(cfg, inputs=["data/raw/a.txt"])
    before = snapshot(cfg.data_dir)

    class Interrupting(NoProgress):
        def advance(self, nbytes: int, ntokens: int) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tokenize(cfg, progress=Interrupting(), batch_chars=500)
    assert snapshot(cfg.data_dir) == before  # nothing new, nothing lost
    assert journal.journaled_stems(cfg.data_dir) == set()
    assert len(tokenize(cfg).shards) == 1


def test_scans_never_see_a_shard_being_written(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, tok
) -> None:
    """Scan the data dir at every step of writing: before, between and after each rename."""
    _raw_files()
    cfg = make_config()
    spec = spec_for(cfg, tok)
    seen: list[tuple[list[str], list[str]]] = []

    def look() -> None:
        scan = scan_shards(cfg.data_dir, spec)
        seen.append(([e.name for e in scan.shards], scan.journaled))

    real_replace = os.replace

    def replace(src, dst):  # type: ignore[no-untyped-def]
        look()
        real_replace(src, dst)
        look()

    class Watching(NoProgress):
        def advance(self, nbytes: int, ntokens: int) -> None:
            look()

    with monkeypatch.context() as patch:
        patch.setattr(shard_writer.os, "replace", replace)
        summary = tokenize(cfg, progress=Watching(), batch_chars=500)
    done = [s.stem for s in summary.shards]
    assert len(seen) > 10
    for shards, journaled in seen:
        assert set(shards) <= set(done)  # only complete shards, never one being written
        assert not set(shards) & set(journaled)
    assert any(journaled for _, journaled in seen)
    assert len(check_all(cfg.data_dir, cfg, tok)) == len(done) == 2


def test_a_second_tokenize_on_the_same_data_dir_is_refused(workspace: Path) -> None:
    _raw_files()
    cfg = make_config()
    Path("data").mkdir(exist_ok=True)
    refused = pytest.raises(DataError, match="another `allllm tokenize` is writing to data")
    with journal.tokenize_lock(cfg.data_dir), refused:
        tokenize(cfg)
    assert shard_stems(cfg.data_dir) == []
    assert len(tokenize(cfg).shards) == 2


_SLOW_CHILD = textwrap.dedent(
    """
    import sys, time
    from allllm.config import load_config
    from allllm.data.tokenize import write as shard_writer
    from allllm.data.tokenize.run import tokenize

    add = shard_writer.ShardWriter.add

    def slow_add(self, ids, *documents):
        if self.stem.startswith("b."):
            time.sleep(0.05)
        add(self, ids, *documents)

    shard_writer.ShardWriter.add = slow_add
    tokenize(load_config(config="cfg.json"), segment_chars=64, batch_chars=200, chunk_bytes=512)
    """
)


@pytest.mark.slow
def test_sigkill_mid_write_then_rerun_equals_an_uninterrupted_run(
    workspace: Path, tmp_path: Path, tok
) -> None:
    _raw_files()
    cfg = make_config()
    Path("cfg.json").write_text(cfg.model_dump_json(), encoding="utf-8")
    reference = _reference(tmp_path / "reference")
    child = subprocess.Popen([sys.executable, "-c", _SLOW_CHILD])
    inflight = Path("data/.allllm/inflight")
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            temps = list(Path("data").glob(".b.*.jsonl.tmp"))
            entries = list(inflight.glob("b.*")) if inflight.is_dir() else []
            if entries and temps and temps[0].stat().st_size > 0:
                break
            assert child.poll() is None, "tokenize finished before it could be killed"
            time.sleep(0.01)
        else:
            pytest.fail("tokenize never started writing b.txt's shard")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    scan = scan_shards(cfg.data_dir, spec_for(cfg, tok))
    assert [e.name for e in scan.shards] == [s for s in shard_stems(cfg.data_dir)]
    assert [e.name.split(".")[0] for e in scan.shards] == ["a"]
    assert len(scan.journaled) == 1 and scan.journaled[0].startswith("b.")
    summary = tokenize(cfg)
    assert summary.cleaned == scan.journaled and summary.up_to_date == ["data/raw/a.txt"]
    assert _result(cfg, tok) == reference
    assert not [p for p in Path("data").iterdir() if p.name.endswith(".tmp")]


def test_background_syncs_leave_exact_shards(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, tok
) -> None:
    """With a sync every few KB, the data written while syncs run is complete and in order."""
    _raw_files()
    cfg = make_config()
    synced: list[int] = []
    real_sync = shard_writer.os.fdatasync

    def sync(fd: int) -> None:
        synced.append(fd)
        real_sync(fd)

    monkeypatch.setattr(shard_writer._HashingFile, "SYNC_BYTES", 1500)
    monkeypatch.setattr(shard_writer.os, "fdatasync", sync)
    tokenize(cfg, batch_chars=300, segment_chars=64)
    assert len(synced) >= 2
    assert len(check_all(cfg.data_dir, cfg, tok)) == 2


def test_cleanup_removes_only_what_a_journal_entry_lists_inside_the_data_dir(
    workspace: Path,
) -> None:
    _raw_files()
    cfg = make_config()
    inflight = Path("data/.allllm/inflight")
    inflight.mkdir(parents=True)
    Path("keep.txt").write_text("outside the data dir")
    Path("data/x.cached.64.20240101_000000.jsonl").write_text("[1]\n")
    Path("data/y.cached.64.20240101_000000.bin").write_bytes(b"\0\0")
    (inflight / "x.cached.64.20240101_000000").write_text(
        '{"stem": "x", "files": ["x.cached.64.20240101_000000.jsonl", "../keep.txt", "/etc/hosts"]}'
    )
    (inflight / "y.cached.64.20240101_000000").write_text("not json")
    summary = tokenize(cfg)
    assert summary.cleaned == ["x.cached.64.20240101_000000", "y.cached.64.20240101_000000"]
    assert not Path("data/x.cached.64.20240101_000000.jsonl").exists()
    assert Path("keep.txt").exists() and Path("/etc/hosts").exists()
    assert Path("data/y.cached.64.20240101_000000.bin").exists()  # not listed: not ours to remove
    assert journal.journaled_stems(cfg.data_dir) == set()
