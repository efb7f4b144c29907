"""Edit-aware training: the ledger of trained documents keeps old text from training again.

Each test is the step-wise flow a user goes through — tokenize, train, edit or
re-tokenize the corpus, train again — run in-process on the micro model.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from allllm.config import load_config
from allllm.data.tokenize.run import tokenize
from allllm.errors import CheckpointError
from allllm.train.checkpoint import checkpoint_summary, latest_checkpoint, list_checkpoints
from allllm.train.options import QuietReporter, TrainOptions
from allllm.train.session import train
from allllm.use.status import build_provenance, build_status
from cli_helpers import run_cli
from train_helpers import make_workspace, text

CKPT = Path("checkpoints/micro")


def _train(name: str = "micro", **kw: object) -> tuple[object, QuietReporter]:
    reporter = QuietReporter()
    result = train(load_config(model=name), TrainOptions(only_new=True, **kw), reporter)  # type: ignore[arg-type]
    return result, reporter


def _tokenize(**kw: object) -> object:
    return tokenize(load_config(model="micro"), **kw)  # type: ignore[arg-type]


def _seen(name: str = "micro") -> dict:
    return json.loads((Path("checkpoints") / name / "seen_datasets.json").read_text())["shards"]


def _status() -> dict:
    cfg = load_config(model="micro")
    return build_status(cfg, checkpoint=checkpoint_summary(cfg.checkpoint_path))


def _new_shards() -> list[dict]:
    return [s for s in _status()["shards"] if s["state"] == "new"]


def _runs() -> list[dict]:
    return [json.loads(x) for x in (CKPT / "runs.jsonl").read_text().splitlines()]


def _ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **data: object) -> Path:
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    root = make_workspace(tmp_path, n_files=0, data=data, train={"keep_checkpoints": 100})
    return root


def _write(root: Path, name: str, body: str) -> Path:
    path = root / "data" / "raw" / name
    path.write_text(body)
    return path


def _paragraphs(n: int, edited: int | None = None) -> str:
    paras = [f"Paragraph {i}: {text(i, 8).strip()}" for i in range(n)]
    if edited is not None:
        paras[edited] = "EDITED. " + paras[edited]
    return "\n\n".join(paras) + "\n"


# -- the named cases ---------------------------------------------------------------------


def test_an_edit_in_a_packed_shard_trains_only_the_edited_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _ws(tmp_path, monkeypatch, pack_below_bytes=10**6)
    for i in range(3):
        _write(root, f"play{i}.txt", text(i, 500))
    _tokenize()
    _train()
    edited = _write(root, "play1.txt", "EDITED. " + text(1, 500))
    _tokenize()
    (new,) = _new_shards()  # the re-made packed shard of all three plays
    assert new["repeat_rows"] > 0 and new["repeat_tokens"] > 0
    assert new["repeat_rows"] <= new["train_rows"]
    result, _reporter = _train()
    (run,) = result.runs  # type: ignore[attr-defined]
    trained = _seen()[new["shard_id"]]["rows"]
    edited_tokens = len(edited.read_bytes()) + 1  # the byte tokenizer, plus EOS
    assert 0 < trained <= math.ceil(edited_tokens / 32) + 2
    assert run["skipped_rows"] == new["repeat_rows"]
    assert _runs()[-1]["skipped_rows"] == run["skipped_rows"]
    assert _seen()[new["shard_id"]]["skipped_rows"] == run["skipped_rows"]


def test_an_edited_paragraph_trains_at_most_three_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _ws(tmp_path, monkeypatch, document_boundary="blank_line")
    _write(root, "book.txt", _paragraphs(2000))
    _tokenize()
    _train()
    _write(root, "book.txt", _paragraphs(2000, edited=1000))
    _tokenize()
    (new,) = _new_shards()
    result, _ = _train()
    assert _seen()[new["shard_id"]]["rows"] <= 3
    assert result.runs[0]["skipped_rows"] > 1000  # type: ignore[attr-defined]
    # which run trained the file, and the one paragraph the next run trained
    cfg = load_config(model="micro")
    found = build_provenance(cfg, "data/raw/book.txt", checkpoint=checkpoint_summary(CKPT))
    assert found["documents"] == 2000 and found["not_trained"] + found["held_out"] < 2000
    assert [r["run_id"] for r in found["runs"]] == [r["run_id"] for r in _runs()]


def test_force_retokenize_trains_nothing_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _ws(tmp_path, monkeypatch, pack_below_bytes=10**6)
    _write(root, "a.txt", text(1, 300))
    _write(root, "b.txt", text(2, 300))
    _tokenize()
    _train()
    _write(root, "c.txt", text(3, 300))
    _tokenize()
    _train()
    before = set(_seen())
    _tokenize(force=True)  # re-packs a, b and c together: a new shard id
    (new,) = _new_shards()
    assert new["shard_id"] not in before and new["repeat_rows"] == new["train_rows"]
    assert _status()["totals"]["new_tokens"] == 0
    code, out, err = run_cli(["train", "--model", "micro", "--only-new"], capsys)
    assert code == 0, err
    assert f"nothing to train: {new['repeat_rows']:,} rows already trained" in out + err
    assert set(_seen()) == before
    code, out, _ = run_cli(["status", "--model", "micro"], capsys)
    print(out)
    assert "already" in out and "trained" in out


def test_appended_text_trains_and_a_second_model_trains_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _ws(tmp_path, monkeypatch)
    path = _write(root, "log.txt", text(1, 400))
    _tokenize()
    _train()
    with path.open("a") as fh:
        fh.write(text(2, 400))
    _tokenize()
    (new,) = _new_shards()
    assert new["repeat_rows"] == 0
    _train()
    assert _seen()[new["shard_id"]]["rows"] == new["train_rows"]
    # a second model sharing data/ has trained nothing: every row trains once
    other = json.loads((root / "configs/micro.json").read_text())
    other["name"] = "other"
    (root / "configs/other.json").write_text(json.dumps(other))
    _train("other")
    assert {k: v["rows"] for k, v in _seen("other").items()} == {
        k: v["rows"] for k, v in _seen().items()
    }


def test_from_checkpoint_rolls_the_ledger_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _ws(tmp_path, monkeypatch, document_boundary="blank_line")
    _write(root, "one.txt", _paragraphs(300))
    _tokenize()
    _train()
    end_of_run_1 = latest_checkpoint(CKPT)
    assert end_of_run_1 is not None
    _write(root, "two.txt", _paragraphs(600)[len(_paragraphs(300)) :])
    _tokenize()
    _train()
    _write(root, "two.txt", "EDITED.\n\n" + _paragraphs(600)[len(_paragraphs(300)) :])
    _tokenize()
    (new,) = _new_shards()
    assert new["repeat_rows"] > 0  # run 2 trained these paragraphs
    _train(from_checkpoint=end_of_run_1.path)
    # back at the end of run 1 the model never trained two.txt: all of it trains
    assert _seen()[new["shard_id"]]["rows"] == new["train_rows"]
    assert _seen()[new["shard_id"]].get("skipped_rows", 0) == 0


def test_replay_draws_only_rows_the_shard_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _ws(tmp_path, monkeypatch, document_boundary="blank_line")
    _write(root, "book.txt", _paragraphs(600))
    _tokenize()
    _train()
    _write(root, "book.txt", _paragraphs(600, edited=300))
    _tokenize()
    _train()
    (edited_id,) = [k for k, v in _seen().items() if v.get("not_trained")]
    record = _seen()[edited_id]
    cfg_path = root / "configs/micro.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["train"]["replay_fraction"] = 0.5
    cfg_path.write_text(json.dumps(cfg))
    _write(root, "more.txt", text(9, 800))
    _tokenize()
    _train()
    ref = latest_checkpoint(CKPT)
    assert ref is not None
    replay = ref.read_state().run.replay  # type: ignore[union-attr]
    assert replay, "replay drew nothing"
    from allllm.data.row_filter import from_ranges
    from allllm.data.valsplit import split_rows

    kept_out = set(from_ranges(record["not_trained"]).tolist())
    seen_rows = {sid: set(rows) for sid, rows in replay.items()}
    assert not seen_rows.get(edited_id, set()) & kept_out
    for sid, rows in seen_rows.items():
        rec = _seen()[sid]
        n = max(rows) + 1
        val = set(split_rows(rec["val_seed"], sid, n, rec["val_fraction"])[1].tolist())
        assert not rows & val


def test_duplicates_in_one_run_train_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _ws(tmp_path, monkeypatch, document_boundary="blank_line")
    _write(root, "a.txt", _paragraphs(300))
    _write(root, "b.txt", "Preface.\n\n" + _paragraphs(300))  # the same paragraphs, and one
    _tokenize()
    result, _ = _train()
    (run,) = result.runs  # type: ignore[attr-defined]
    assert run["dedup_rows"] > 0
    rows = sorted(v["rows"] for v in _seen().values())
    assert rows[0] < rows[1] / 10  # the copy (second in shard_id order) hardly trains


# -- the ledger follows the checkpoints ----------------------------------------------------------


def _edited_book(root: Path) -> None:
    _write(root, "book.txt", _paragraphs(400))
    _tokenize()
    _train()
    _write(root, "book.txt", _paragraphs(400, edited=200))
    _tokenize()


def test_a_checkpoint_lists_its_segments_and_unlisted_ones_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _ws(tmp_path, monkeypatch, document_boundary="blank_line")
    _edited_book(root)
    ref = latest_checkpoint(CKPT)
    assert ref is not None
    listed = {s["name"] for s in ref.read_state().ledger or []}
    on_disk = {p.name for p in (CKPT / "ledger").glob("seg-*.ledger")}
    assert listed and listed == on_disk
    stray = CKPT / "ledger" / "seg-0123456789abcdef.ledger"
    stray.write_bytes(b"not listed by any checkpoint")
    _train()
    assert not stray.exists()
    state = json.loads((list_checkpoints(CKPT)[-1].path / "trainer_state.json").read_text())
    # nothing of the size of the documents in the state: a skipped stretch is one range
    assert all(len(rec.get("not_trained", [])) <= 2 for rec in state["seen"].values())


def test_a_lost_segment_is_rebuilt_from_the_seen_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _ws(tmp_path, monkeypatch, document_boundary="blank_line")
    _edited_book(root)
    shutil.rmtree(CKPT / "ledger")
    (new,) = _new_shards()
    _result, reporter = _train()
    assert any("rebuilding the ledger" in w for w in reporter.warnings)
    assert _seen()[new["shard_id"]]["rows"] <= 3


def test_a_lost_segment_with_a_lost_shard_stops_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _ws(tmp_path, monkeypatch, document_boundary="blank_line")
    _edited_book(root)
    shutil.rmtree(CKPT / "ledger")
    first = next(iter(_seen()))
    for meta in Path("data").glob("*.meta.json"):
        if json.loads(meta.read_text())["shard_id"] == first:
            for f in Path("data").glob(meta.name.removesuffix(".meta.json") + ".*"):
                f.unlink()
    with pytest.raises(CheckpointError, match="cannot be rebuilt"):
        _train()


def test_a_checkpoint_from_before_the_ledger_gets_one_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An allllm 0.2 checkpoint (state format 2, shards without sidecars) is upgraded."""
    root = _ws(tmp_path, monkeypatch, document_boundary="blank_line")
    _write(root, "book.txt", _paragraphs(400))
    _tokenize()
    _train()
    for ref in list_checkpoints(CKPT):
        path = ref.path / "trainer_state.json"
        state = json.loads(path.read_text())
        state["format_version"] = 2
        del state["ledger"]
        path.write_text(json.dumps(state))
    shutil.rmtree(CKPT / "ledger")
    for meta in Path("data").glob("*.meta.json"):  # shards of before the sidecar
        data = json.loads(meta.read_text())
        (Path("data") / data.pop("documents")["name"]).unlink()
        meta.write_text(json.dumps(data))
    _write(root, "book.txt", _paragraphs(400, edited=200))
    _tokenize()
    (new,) = _new_shards()
    _result, reporter = _train()
    assert any("built the document ledger" in w for w in reporter.warnings)
    assert _seen()[new["shard_id"]]["rows"] <= 3


def test_status_counts_repeats_from_its_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _ws(tmp_path, monkeypatch, document_boundary="blank_line")
    _edited_book(root)
    first = _new_shards()
    cache = CKPT / "ledger" / "status-cache.json"
    assert cache.exists()
    body = json.loads(cache.read_text())
    sid = first[0]["shard_id"]
    body["shards"][sid]["repeat_rows"] = 1  # a cache hit answers without reading the shard
    cache.write_text(json.dumps(body))
    assert _new_shards()[0]["repeat_rows"] == 1
    cache.write_text("{broken")
    assert _new_shards()[0]["repeat_rows"] == first[0]["repeat_rows"]
    assert np.isfinite(first[0]["repeat_tokens"])
