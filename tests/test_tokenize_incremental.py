"""Incremental tokenize: up to date, appended, changed (superseded), packed, settings, names."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from allllm.config import Config, TokenizerConfig
from allllm.data import raw
from allllm.data.shard_format import ShardMeta, TokenizerInfo, read_meta
from allllm.data.tokenize import jobs as tokenize_module
from allllm.data.tokenize.plan import ExistingShard, live_shards, source_stem
from allllm.data.tokenize.run import tokenize
from allllm.tokenizer.manager import TokenizerManager
from tokenize_helpers import (
    check_all,
    check_shard,
    documents,
    make_config,
    real_text,
    shard_stems,
    snapshot,
    states,
    whole_document_ids,
    write_raw,
)


@pytest.fixture()
def byte_tok() -> TokenizerManager:
    return TokenizerManager.from_config(TokenizerConfig(backend="byte"))


def _ids_of(cfg: Config, path: str, tok: TokenizerManager, start: int = 0) -> np.ndarray:
    return whole_document_ids(documents(Path(path), cfg, start=start), tok, cfg)


def test_second_run_is_up_to_date_and_force_redoes(workspace: Path, byte_tok) -> None:
    write_raw("a.txt", real_text(3000, start=1))
    write_raw("b.txt", real_text(2000, start=2))
    cfg = make_config()
    first = tokenize(cfg)
    assert len(first.shards) == 2 and first.up_to_date == []
    before = snapshot(cfg.data_dir)
    again = tokenize(cfg)
    assert again.shards == [] and again.up_to_date == ["data/raw/a.txt", "data/raw/b.txt"]
    assert snapshot(cfg.data_dir) == before
    forced = tokenize(cfg, force=True)
    # identical text rebuilds the same shards: the rebuilds are discarded, nothing superseded
    assert forced.shards == [] and forced.superseded == [] and forced.up_to_date == []
    assert forced.unchanged == [s.stem for s in first.shards]
    assert snapshot(cfg.data_dir) == before
    assert sorted(states(cfg, byte_tok).values()) == ["new", "new"]
    assert tokenize(cfg).shards == []


@pytest.mark.parametrize("boundary", ["file", "line"])
def test_appended_text_gets_a_shard_of_only_the_new_bytes(
    workspace: Path, byte_tok: TokenizerManager, boundary: str
) -> None:
    a = write_raw("a.txt", real_text(3000, start=1))
    write_raw("b.txt", real_text(2000, start=2))
    cfg = make_config(document_boundary=boundary)
    first = tokenize(cfg)
    old_size = a.stat().st_size
    with a.open("a", encoding="utf-8") as fh:
        fh.write("Appended text.\nA second appended line.\n")
    second = tokenize(cfg)
    (shard,) = second.shards
    assert shard.why == ["appended"] and second.up_to_date == ["data/raw/b.txt"]
    checked = check_shard(cfg.data_dir, shard.stem, cfg, byte_tok)
    (source,) = checked.meta.sources
    assert tuple(source.byte_range) == (old_size, a.stat().st_size)
    assert np.array_equal(checked.ids, _ids_of(cfg, "data/raw/a.txt", byte_tok, start=old_size))
    assert checked.meta.supersedes == []
    assert set(states(cfg, byte_tok).values()) == {"new"}  # the old shard of a.txt stays new
    assert len(states(cfg, byte_tok)) == 3
    assert tokenize(cfg).shards == []
    assert first.shards[0].stem in shard_stems(cfg.data_dir)


def test_changed_source_is_redone_whole_and_its_old_shards_superseded(
    workspace: Path, byte_tok: TokenizerManager
) -> None:
    a = write_raw("a.txt", real_text(3000, start=1))
    write_raw("b.txt", real_text(2000, start=2))
    cfg = make_config()
    first = {s.sources[0]: s for s in tokenize(cfg).shards}
    a.write_bytes(a.read_bytes() + b"appended\n")  # bytes: the text holds "\r\n" line ends
    appended = tokenize(cfg).shards[0]
    assert appended.why == ["appended"]
    a.write_bytes(b"Changed at the start. " + a.read_bytes())
    changed = tokenize(cfg)
    (shard,) = changed.shards
    assert shard.why == ["changed"]
    assert sorted(changed.superseded) == sorted([first["data/raw/a.txt"].stem, appended.stem])
    assert sorted(shard.supersedes) == sorted([first["data/raw/a.txt"].shard_id, appended.shard_id])
    checked = check_shard(cfg.data_dir, shard.stem, cfg, byte_tok)
    assert tuple(checked.meta.sources[0].byte_range) == (0, a.stat().st_size)
    assert np.array_equal(checked.ids, _ids_of(cfg, "data/raw/a.txt", byte_tok))
    got = states(cfg, byte_tok)
    assert got[first["data/raw/a.txt"].stem] == got[appended.stem] == "superseded"
    assert got[shard.stem] == got[first["data/raw/b.txt"].stem] == "new"
    assert tokenize(cfg).shards == []


def test_packed_sources_are_tokenized_and_redone_together(
    workspace: Path, byte_tok: TokenizerManager
) -> None:
    for name, k in (("a.txt", 1), ("b.txt", 2), ("c.txt", 3)):
        write_raw(name, real_text(1500, start=k))
    write_raw("big.txt", real_text(5000, start=4))
    cfg = make_config(pack_below_bytes=4000)
    first = tokenize(cfg)
    packed, big = sorted(first.shards, key=lambda s: s.stem, reverse=True)
    assert packed.stem.startswith("packed-a-3.cached.64.") and big.stem.startswith("big.cached.")
    assert packed.sources == ["data/raw/a.txt", "data/raw/b.txt", "data/raw/c.txt"]
    checked = check_shard(cfg.data_dir, packed.stem, cfg, byte_tok)
    expected = np.concatenate([_ids_of(cfg, f"data/raw/{n}.txt", byte_tok) for n in "abc"])
    assert np.array_equal(checked.ids, expected)

    b = Path("data/raw/b.txt")
    b.write_text(b.read_text().replace("e", "E", 3), encoding="utf-8")
    again = tokenize(cfg)
    (repacked,) = again.shards
    assert repacked.sources == packed.sources  # all three, tokenized together again
    assert sorted(repacked.why) == ["changed", "changed", "changed"]
    assert repacked.supersedes == [packed.shard_id] and again.superseded == [packed.stem]
    assert again.up_to_date == ["data/raw/big.txt"]
    checked = check_shard(cfg.data_dir, repacked.stem, cfg, byte_tok)
    expected = np.concatenate([_ids_of(cfg, f"data/raw/{n}.txt", byte_tok) for n in "abc"])
    assert np.array_equal(checked.ids, expected)
    got = states(cfg, byte_tok)
    assert (got[packed.stem], got[repacked.stem], got[big.stem]) == ("superseded", "new", "new")


def test_a_source_gone_from_the_input_is_warned_about_when_its_pack_is_redone(
    workspace: Path,
) -> None:
    write_raw("a.txt", "first text\n")
    gone = write_raw("b.txt", "second text\n")
    cfg = make_config(pack_below_bytes=1000)
    tokenize(cfg)
    gone.unlink()
    write_raw("a.txt", "first text, changed\n")
    summary = tokenize(cfg)
    assert summary.shards[0].sources == ["data/raw/a.txt"]
    assert any("data/raw/b.txt: no longer in the raw input" in w for w in summary.warnings)


@pytest.mark.parametrize(
    "change",
    [
        {"seq_len": 32},
        {"document_boundary": "line"},
        {"add_bos": True},
        {"add_eos": False},
        {"tokenizer": "tiktoken"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_other_settings_make_new_shards_and_leave_old_ones_alone(
    workspace: Path, change: dict, tiktoken_tokenizer_config: TokenizerConfig
) -> None:
    write_raw("a.txt", real_text(2000, start=1))
    tokenize(make_config())
    before = snapshot(Path("data"))
    data = {k: v for k, v in change.items() if k in ("seq_len", "document_boundary")}
    tok_cfg = TokenizerConfig(backend="byte")
    if "tokenizer" in change:
        tok_cfg = tiktoken_tokenizer_config
    tok_cfg = tok_cfg.model_copy(
        update={k: v for k, v in change.items() if k in ("add_bos", "add_eos")}
    )
    cfg = make_config(tok_cfg, **data)
    summary = tokenize(cfg)
    assert [s.why for s in summary.shards] == [["new"]] and summary.superseded == []
    assert all(snapshot(Path("data"))[name] == sha for name, sha in before.items())
    check_shard(cfg.data_dir, summary.shards[0].stem, cfg, TokenizerManager.from_config(tok_cfg))
    assert tokenize(cfg).shards == []


def test_text_that_comes_back_is_not_tokenized_forever(
    workspace: Path, byte_tok: TokenizerManager
) -> None:
    """v1 → v2 → v1: the third shard has the first one's id; only order tells it apart."""
    a = write_raw("a.txt", "version one\n")
    cfg = make_config()
    v1 = tokenize(cfg).shards[0]
    a.write_text("version two\n", encoding="utf-8")
    v2 = tokenize(cfg).shards[0]
    a.write_text("version one\n", encoding="utf-8")
    v3 = tokenize(cfg).shards[0]
    assert v3.shard_id == v1.shard_id and v3.supersedes == [v2.shard_id]
    assert tokenize(cfg).shards == []  # up to date, not "new" again and again


def test_live_shards_follow_creation_order() -> None:
    def shard(stem: str, sid: str, created: str, supersedes: list[str]) -> ExistingShard:
        meta = ShardMeta(
            format_version=1,
            shard_id=sid * 64,
            seq_len=8,
            dtype="uint16",
            n_rows=1,
            n_tokens=1,
            last_row_len=1,
            max_id=1,
            tokenizer=TokenizerInfo(
                backend="byte",
                path=None,
                fingerprint="f",
                vocab_size=9,
                bos_id=None,
                eos_id=None,
                pad_id=None,
            ),
            document_boundary="file",
            sources=[],
            files={},
            created=created,
            supersedes=[s * 64 for s in supersedes],
        )
        return ExistingShard(stem, meta)

    a = shard("x.cached.8.20240101_000000", "a", "2024-01-01T00:00:00Z", [])
    b = shard("x.cached.8.20240101_000001", "b", "2024-01-01T00:00:01Z", ["a"])
    c = shard("x.cached.8.20240101_000001.1", "a", "2024-01-01T00:00:01Z", ["b"])
    assert [s.stem for s in live_shards([c, a, b])] == [c.stem]
    assert [s.stem for s in live_shards([b, a])] == [b.stem]
    d = shard("x.cached.8.20240101_000002", "d", "2024-01-01T00:00:02Z", ["d"])  # itself: no-op
    assert [s.stem for s in live_shards([d])] == [d.stem]


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("notes.txt", "notes"),
        ("Notes.TXT", "Notes"),
        ("dump.jsonl.gz", "dump"),
        ("a.b.txt.gz", "a.b"),
        (".hidden.txt", "hidden"),
        ("...txt", "source"),
    ],
)
def test_source_stems_are_never_hidden(name: str, stem: str) -> None:
    assert source_stem(Path(name)) == stem


def test_meta_source_paths_are_relative_to_the_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, byte_tok: TokenizerManager
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    inside = write_raw("in.txt", "inside the workspace\n")
    outside = tmp_path / "elsewhere" / "out.txt"
    outside.parent.mkdir()
    outside.write_text("outside the workspace\n", encoding="utf-8")
    cfg = make_config()
    summary = tokenize(cfg, inputs=[str(inside.resolve()), str(outside)])
    assert sorted(s.sources[0] for s in summary.shards) == sorted(["data/raw/in.txt", str(outside)])
    check_all(cfg.data_dir, cfg, byte_tok)
    again = tokenize(cfg, inputs=["data/raw/in.txt", str(outside)])
    assert again.shards == [] and len(again.up_to_date) == 2


def test_names_taken_in_the_same_second_get_a_suffix_and_nothing_is_overwritten(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokenize_module, "utc_timestamp", lambda: "20240701_101512")
    write_raw("a.txt", "some text\n")
    cfg = make_config()
    tokenize(cfg)
    before = snapshot(cfg.data_dir)
    write_raw("a.txt", "other text\n")  # a rebuild of unchanged text is discarded: change it
    tokenize(cfg, force=True)
    write_raw("a.txt", "some text\n")
    tokenize(cfg, force=True)
    assert shard_stems(cfg.data_dir) == [
        "a.cached.64.20240701_101512",
        "a.cached.64.20240701_101512.1",
        "a.cached.64.20240701_101512.2",
    ]
    assert all(snapshot(cfg.data_dir)[name] == sha for name, sha in before.items())


def test_a_deleted_shard_of_an_appended_source_means_a_full_redo(
    workspace: Path, byte_tok: TokenizerManager
) -> None:
    a = write_raw("a.txt", "first part\n")
    cfg = make_config()
    first = tokenize(cfg).shards[0]
    a.write_text("first part\nsecond part\n", encoding="utf-8")
    second = tokenize(cfg).shards[0]
    for suffix in (".jsonl", ".bin", ".meta.json"):
        (cfg.data_dir / f"{first.stem}{suffix}").unlink()
    redo = tokenize(cfg)
    assert redo.shards[0].why == ["changed"] and redo.shards[0].supersedes == [second.shard_id]
    (checked,) = [s for s in check_all(cfg.data_dir, cfg, byte_tok) if s.stem != second.stem]
    assert np.array_equal(checked.ids, _ids_of(cfg, "data/raw/a.txt", byte_tok))


def test_a_grown_gz_is_redone_whole(workspace: Path, byte_tok: TokenizerManager) -> None:
    gz = write_raw("a.txt.gz", gzip.compress(b"one\n"))
    cfg = make_config()
    first = tokenize(cfg).shards[0]
    gz.write_bytes(gzip.compress(b"one\ntwo\n"))
    second = tokenize(cfg)
    assert second.shards[0].why == ["changed"] and second.superseded == [first.stem]
    checked = check_shard(cfg.data_dir, second.shards[0].stem, cfg, byte_tok)
    assert np.array_equal(checked.ids, whole_document_ids(["one\ntwo\n"], byte_tok, cfg))


def test_text_appended_during_a_run_waits_for_the_next_run(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, byte_tok: TokenizerManager
) -> None:
    """Each source is hashed and read over the size it was listed with."""
    a = write_raw("a.txt", "before\n")
    cfg = make_config()
    listed = raw.resolve_sources

    def list_then_append(*args, **kw):  # type: ignore[no-untyped-def]
        sources = listed(*args, **kw)
        with a.open("a", encoding="utf-8") as fh:
            fh.write("during\n")
        return sources

    monkeypatch.setattr(raw, "resolve_sources", list_then_append)
    first = tokenize(cfg).shards[0]
    monkeypatch.setattr(raw, "resolve_sources", listed)
    (source,) = read_meta(cfg.data_dir / f"{first.stem}.meta.json").sources
    assert (source.size, tuple(source.byte_range)) == (7, (0, 7))
    assert source.sha256 == hashlib.sha256(b"before\n").hexdigest()
    second = tokenize(cfg)
    assert second.shards[0].why == ["appended"]
    checked = check_shard(cfg.data_dir, second.shards[0].stem, cfg, byte_tok)
    assert np.array_equal(checked.ids, whole_document_ids(["during\n"], byte_tok, cfg))


def test_jsonl_sources_do_not_depend_on_the_document_boundary(workspace: Path) -> None:
    """One record is one document whatever the boundary, also for an upper-case suffix."""
    write_raw("Records.JSONL", '{"text": "first record"}\n{"text": "second"}\n')
    first = tokenize(make_config(document_boundary="file"))
    assert first.shards[0].stem.startswith("Records.cached.")
    again = tokenize(make_config(document_boundary="line"))
    assert again.shards == [] and again.up_to_date == ["data/raw/Records.JSONL"]
