"""``tokenize --force`` never leaves two shards of one id; a kill never leaves a temporary behind.

(1) A rebuild with the ``shard_id`` and sources of a live shard whose files pass their
digest check is discarded and that shard reported ``unchanged``; a twin with corrupt,
truncated or missing files (or without a format the run writes) is replaced; changed
text supersedes as always. The summary's counts are what ``status`` shows next, and a
kill at any step of discarding or replacing leaves no second visible shard of an id.
(2) The journal entry's own temporary (``inflight/.<stem>.<8 chars>.tmp``, from
``util.atomic``'s mkstemp) is removed by the next tokenize, under the lock, and only
names of that pattern.
"""

from __future__ import annotations

import errno
import json
import pathlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from allllm.config import Config
from allllm.data.shard_format import INFLIGHT_DIR
from allllm.data.tokenize import journal, rebuilt
from allllm.data.tokenize.run import tokenize
from allllm.errors import DataError
from allllm.tokenizer.manager import TokenizerManager
from allllm.use.status import build_status
from tokenize_helpers import (
    check_all,
    check_shard,
    make_config,
    real_text,
    shard_stems,
    snapshot,
    write_raw,
)


class Crash(BaseException):
    """Stands for a SIGKILL: raised at every later step too, so nothing else reaches the disk."""


@pytest.fixture()
def tok() -> TokenizerManager:
    return TokenizerManager.from_config(make_config().tokenizer)


def _states(cfg: Config) -> dict[str, list[str]]:
    """state -> stems, as ``allllm status --verify`` reports them next."""
    out: dict[str, list[str]] = {}
    for shard in build_status(cfg, verify=True)["shards"]:
        out.setdefault(shard["state"], []).append(shard["name"])
    return {state: sorted(stems) for state, stems in out.items()}


def _stem_of(summary_shards: list[Any], source: str) -> str:
    (stem,) = [s.stem for s in summary_shards if s.sources == [source]]
    return stem


def test_force_on_unchanged_sources_writes_nothing_and_status_agrees(workspace: Path) -> None:
    write_raw("a.txt", real_text(3000, start=1))
    write_raw("b.txt", real_text(2000, start=2))
    write_raw("c.txt", "small one\n")
    write_raw("d.txt", "small two\n")
    cfg = make_config(pack_below_bytes=100)  # c and d share a packed shard
    first = tokenize(cfg)
    assert len(first.shards) == 3
    before = snapshot(cfg.data_dir)
    forced = tokenize(cfg, force=True)
    assert forced.shards == [] and forced.superseded == [] and forced.replaced == []
    assert forced.unchanged == [s.stem for s in first.shards]
    assert snapshot(cfg.data_dir) == before  # the rebuilds are gone, the originals untouched
    assert not list((cfg.data_dir / INFLIGHT_DIR).iterdir())
    assert _states(cfg) == {"new": sorted(s.stem for s in first.shards)}
    assert tokenize(cfg).shards == []  # and the next run finds everything up to date
    summary = forced.to_dict()
    assert summary["unchanged"] == forced.unchanged and summary["replaced"] == []


def test_force_on_a_mix_counts_what_status_shows(workspace: Path, tok) -> None:
    write_raw("a.txt", real_text(3000, start=1))
    b = write_raw("b.txt", real_text(2000, start=2))
    c = write_raw("c.txt", real_text(2500, start=3))
    cfg = make_config()
    first = tokenize(cfg)
    with c.open("a", encoding="utf-8") as fh:  # c gets a second shard of its appended text
        fh.write("Appended text.\n")
    appended = tokenize(cfg).shards
    b.write_text(real_text(1800, start=4), encoding="utf-8")  # b changes other than appending
    forced = tokenize(cfg, force=True)
    a_stem = _stem_of(first.shards, "data/raw/a.txt")
    old_b, old_c = (
        _stem_of(first.shards, "data/raw/b.txt"),
        _stem_of(first.shards, "data/raw/c.txt"),
    )
    assert forced.unchanged == [a_stem] and forced.replaced == []
    assert sorted(s.sources[0] for s in forced.shards) == ["data/raw/b.txt", "data/raw/c.txt"]
    assert forced.superseded == sorted([old_b, old_c, appended[0].stem])
    states = _states(cfg)
    assert states == {
        "new": sorted([a_stem, *(s.stem for s in forced.shards)]),
        "superseded": forced.superseded,
    }
    assert len(states["new"]) == len(forced.shards) + len(forced.unchanged)
    for stem in states["new"]:
        check_shard(cfg.data_dir, stem, cfg, tok)


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "flip":  # same size: only the digest tells
        path.write_bytes(data[:10] + bytes([data[10] ^ 1]) + data[11:])
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["flip", "truncate", "missing"])
def test_force_replaces_a_twin_whose_files_fail_their_check(workspace: Path, tok, how: str) -> None:
    write_raw("a.txt", real_text(3000, start=1))
    write_raw("b.txt", real_text(2000, start=2))
    cfg = make_config()
    first = tokenize(cfg)
    a_stem, b_stem = (s.stem for s in first.shards)
    _corrupt(cfg.data_dir / f"{a_stem}.jsonl", how)
    assert _states(cfg)["invalid"] == [a_stem]
    forced = tokenize(cfg, force=True)
    (rebuilt_a,) = forced.shards
    assert rebuilt_a.shard_id == first.shards[0].shard_id and rebuilt_a.stem != a_stem
    assert forced.replaced == [a_stem] and forced.unchanged == [b_stem]
    assert forced.superseded == []
    assert not [
        x for x in (".jsonl", ".bin", ".meta.json") if (cfg.data_dir / f"{a_stem}{x}").exists()
    ]
    assert _states(cfg) == {"new": sorted([rebuilt_a.stem, b_stem])}
    assert [c.stem for c in check_all(cfg.data_dir, cfg, tok)] == sorted([rebuilt_a.stem, b_stem])


def test_force_with_a_new_format_replaces_the_twin_and_without_it_keeps_it(
    workspace: Path, tok
) -> None:
    write_raw("a.txt", real_text(3000, start=1))
    cfg = make_config(formats=["jsonl"])
    (old,) = tokenize(cfg).shards
    with_bin = tokenize(cfg, force=True, extra_formats=["bin"])
    (new,) = with_bin.shards
    assert with_bin.replaced == [old.stem] and new.shard_id == old.shard_id
    assert sorted(new.files) == [f"{new.stem}.bin", f"{new.stem}.jsonl"]
    again = tokenize(cfg, force=True)  # .jsonl only now: the shard with both formats stays
    assert again.shards == [] and again.unchanged == [new.stem] and again.replaced == []
    assert _states(cfg) == {"new": [new.stem]}


def test_a_copy_of_a_source_is_not_taken_for_its_rebuild(workspace: Path) -> None:
    """Same ids, other sources: not the live shard's rebuild, so it is kept (a duplicate, as
    two shards of one id always are) and the copy is up to date next time."""
    text = real_text(2000, start=1)
    write_raw("a.txt", text)
    cfg = make_config()
    tokenize(cfg)
    write_raw("copy.txt", text)
    (copy,) = tokenize(cfg).shards
    assert tokenize(cfg).up_to_date == ["data/raw/a.txt", "data/raw/copy.txt"]
    forced = tokenize(cfg, force=True)
    assert forced.shards == [] and len(forced.unchanged) == 2 and copy.stem in forced.unchanged


# -- a kill at any step of discarding or replacing ------------------------------------------------


class _Killer:
    """Kills the ``step``-th mutation of the discard/replace phase (a journal entry written for
    an old shard, or any unlink, while a rebuild settles): from there on, every mutation dies
    too, also in cleanup handlers — as if the process had been SIGKILLed at that moment."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, step: int) -> None:
        self.step, self.calls, self.active, self.dead = step, 0, False, False
        real_unlink = pathlib.Path.unlink
        real_begin = rebuilt.journal.begin
        real_settle = rebuilt.settle

        def unlink(path: Path, missing_ok: bool = False) -> None:
            self.tick()
            real_unlink(path, missing_ok=missing_ok)

        def begin(data_dir: Path, stem: str, files: list[str]) -> Path:
            self.tick()
            return real_begin(data_dir, stem, files)

        def settle(*args: Any) -> Any:
            self.active = True
            try:
                return real_settle(*args)
            finally:
                self.active = False

        monkeypatch.setattr(pathlib.Path, "unlink", unlink)
        monkeypatch.setattr(rebuilt.journal, "begin", begin)
        monkeypatch.setattr("allllm.data.tokenize.jobs.settle", settle)

    def tick(self) -> None:
        if self.active and not self.dead:
            self.calls += 1
            self.dead = self.calls >= self.step
        if self.dead:
            raise Crash


def test_a_kill_at_any_step_leaves_no_duplicate_and_the_rerun_repairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tok
) -> None:
    base = tmp_path / "base"
    base.mkdir()
    monkeypatch.chdir(base)
    write_raw("a.txt", real_text(3000, start=1))
    write_raw("b.txt", real_text(2000, start=2))
    cfg = make_config()
    first = tokenize(cfg)
    good_ids = {s.shard_id for s in first.shards}
    _corrupt(cfg.data_dir / f"{first.shards[1].stem}.jsonl", "flip")  # b's twin is replaced
    step = 1
    while True:
        ws = tmp_path / f"kill-{step}"
        shutil.copytree(base, ws, symlinks=True)
        monkeypatch.chdir(ws)
        with monkeypatch.context() as patch:
            killer = _Killer(patch, step)
            try:
                tokenize(cfg, force=True)
            except Crash:
                pass
        states = _states(cfg)
        assert "duplicate" not in states, (step, states)
        visible = build_status(cfg, verify=True)["shards"]
        assert {s["shard_id"] for s in visible if s["state"] == "new"} <= good_ids
        tokenize(cfg, force=True)  # the user runs it again
        final = build_status(cfg, verify=True)["shards"]
        assert sorted(s["state"] for s in final) == ["new", "new"], (step, final)
        assert {s["shard_id"] for s in final} == good_ids
        assert not list((cfg.data_dir / INFLIGHT_DIR).iterdir())
        assert not [p for p in cfg.data_dir.iterdir() if p.name.endswith(".tmp")]
        if not killer.dead:
            break
        step += 1
    assert step > 10  # every unlink and entry of both settles was a kill point


# -- the journal's own temporaries --------------------------------------------------------------


STEM = "b.cached.64.20240101_000000"


def _entry_temp(folder: Path, stem: str, suffix: str = "k2x_9qaz") -> Path:
    """What a kill between an entry's mkstemp and its rename leaves (``atomic_writer``)."""
    record = {"stem": stem, "files": [f".{stem}.jsonl.tmp", f"{stem}.jsonl"], "pid": 1}
    path = folder / f".{stem}.{suffix}.tmp"
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def test_the_next_tokenize_removes_every_temporary_a_kill_leaves(workspace: Path, tok) -> None:
    write_raw("a.txt", real_text(3000, start=1))
    cfg = make_config()
    inflight = cfg.data_dir / INFLIGHT_DIR
    inflight.mkdir(parents=True)
    temp = _entry_temp(inflight, STEM)
    other = "c.cached.64.20240101_000001.3"  # an entry that did land, and its shard's temporaries
    files = [f".{other}.jsonl.tmp", f".{other}.meta.json.tmp", f"{other}.jsonl"]
    (inflight / other).write_text(json.dumps({"stem": other, "files": files}), encoding="utf-8")
    for name in files:
        (cfg.data_dir / name).write_text("[1]\n")
    not_ours = [".DS_Store", ".notes.k2x_9qaz.tmp", f".{STEM}.tmp", f".{STEM}.K2X_9QAZ.tmp"]
    for name in not_ours:
        (inflight / name).write_text("not ours")
    summary = tokenize(cfg)
    assert summary.cleaned == [STEM, other]
    assert not temp.exists() and not [n for n in files if (cfg.data_dir / n).exists()]
    assert sorted(p.name for p in inflight.iterdir()) == sorted(not_ours)
    assert [s.stem for s in check_all(cfg.data_dir, cfg, tok)] == shard_stems(cfg.data_dir)
    assert len(summary.shards) == 1


def test_temporaries_are_left_alone_while_another_tokenize_holds_the_lock(workspace: Path) -> None:
    write_raw("a.txt", "some text\n")
    cfg = make_config()
    inflight = cfg.data_dir / INFLIGHT_DIR
    inflight.mkdir(parents=True)
    temp = _entry_temp(inflight, STEM)
    with pytest.raises(RuntimeError, match="tokenize lock"):
        journal.clean_leftovers(cfg.data_dir)  # only a lock holder may clean
    with journal.tokenize_lock(cfg.data_dir):  # another tokenize is running
        with pytest.raises(DataError, match="another `allllm tokenize`"):
            tokenize(cfg)
        assert temp.exists()
    with journal.tokenize_lock(cfg.data_dir):
        assert journal.clean_leftovers(cfg.data_dir) == {STEM: [f"{INFLIGHT_DIR}/{temp.name}"]}
    assert not temp.exists()


def test_a_full_disk_while_replacing_keeps_the_old_shard_and_says_so(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_raw("a.txt", real_text(3000, start=1))
    cfg = make_config()
    (old,) = tokenize(cfg).shards
    _corrupt(cfg.data_dir / f"{old.stem}.jsonl", "flip")
    before = snapshot(cfg.data_dir)
    real_begin = rebuilt.journal.begin

    def begin(data_dir: Path, stem: str, files: list[str]) -> Path:
        if stem == old.stem:  # the entry that would retire the corrupt twin
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_begin(data_dir, stem, files)

    monkeypatch.setattr(rebuilt.journal, "begin", begin)
    with pytest.raises(DataError, match="the disk is full"):
        tokenize(cfg, force=True)
    assert snapshot(cfg.data_dir) == before  # the rebuild removed, the old shard as it was
    assert not list((cfg.data_dir / INFLIGHT_DIR).iterdir())
