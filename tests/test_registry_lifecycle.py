"""Registry over real tokenize output: reverted text, changed settings, a shard caught mid-write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from allllm.data.tokenize import journal
from allllm.data.tokenize.run import tokenize
from allllm.tokenizer.manager import TokenizerManager
from tokenize_helpers import make_config, scan, write_raw


@pytest.fixture()
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _trainable(cfg: object, tok: TokenizerManager) -> list[str]:
    return sorted(e.name for e in scan(cfg, tok).trainable())


def test_reverted_text_is_trainable_again(ws: Path) -> None:
    cfg = make_config()
    tok = TokenizerManager.from_config(cfg.tokenizer)
    v1, v2 = "first version of the notes\n" * 40, "second, rewritten version\n" * 40
    write_raw("notes.txt", v1)
    s1 = tokenize(cfg).shards[0]
    write_raw("notes.txt", v2)
    s2 = tokenize(cfg).shards[0]
    write_raw("notes.txt", v1)  # back to the first text
    s3 = tokenize(cfg).shards[0]
    assert s3.shard_id == s1.shard_id
    result = scan(cfg, tok)
    state = {e.name: e.state for e in result.shards}
    assert state[s1.stem] in ("superseded", "duplicate")
    assert state[s2.stem] == "superseded"
    assert state[s3.stem] == "new"  # the current text is trainable
    assert _trainable(cfg, tok) == [s3.stem]


def test_changed_tokenize_settings_make_old_shards_invalid(ws: Path) -> None:
    cfg = make_config()
    tok = TokenizerManager.from_config(cfg.tokenizer)
    write_raw("a.txt", "one paragraph\n\nanother paragraph\n" * 30)
    old = tokenize(cfg).shards[0]
    other = make_config(document_boundary="blank_line")
    result = {e.name: e for e in scan(other, tok).shards}
    assert result[old.stem].state == "invalid"
    assert "document_boundary differs" in (result[old.stem].reason or "")
    new = tokenize(other).shards[0]  # the other setting gets its own shard
    assert _trainable(other, tok) == [new.stem]
    assert _trainable(cfg, tok) == [old.stem]  # and the first config keeps its own


def test_a_shard_whose_meta_lands_during_the_scan_is_not_unverified(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data files renamed in, meta not yet: journaled before the listing, gone after it."""
    cfg = make_config()
    tok = TokenizerManager.from_config(cfg.tokenizer)
    write_raw("a.txt", "some text\n" * 50)
    shard = tokenize(cfg).shards[0]
    data = cfg.data_dir
    meta = data / f"{shard.stem}.meta.json"
    hidden = data / ".held-meta"
    os.replace(meta, hidden)
    journal.begin(data, shard.stem, [])
    from allllm.data import registry

    real = registry._list_stems

    def list_then_finish(*args: object, **kw: object) -> object:
        groups = real(*args, **kw)  # type: ignore[arg-type]
        os.replace(hidden, meta)  # the writer renames the meta, then ends the journal entry
        journal.end(data, shard.stem)
        return groups

    monkeypatch.setattr(registry, "_list_stems", list_then_finish)
    # the first journal read happens before begin() in a real race; emulate that too
    real_journaled = registry.journaled_stems
    calls = {"n": 0}

    def journaled(d: Path) -> set[str]:
        calls["n"] += 1
        return set() if calls["n"] == 1 else real_journaled(d)

    monkeypatch.setattr(registry, "journaled_stems", journaled)
    entry = {e.name: e for e in scan(cfg, tok).shards}[shard.stem]
    assert entry.state == "new" and entry.shard_id == shard.shard_id
