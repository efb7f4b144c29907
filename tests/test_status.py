"""`allllm status` library: the report of docs/design.md (JSON outputs) and its rich table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from allllm.cli.views.status import render_status
from allllm.config import Config, load_config
from allllm.data.seen import SeenMap, SeenRecord, save_seen, seen_path
from allllm.errors import DataError, TokenizerError
from allllm.use.status import build_status
from shard_factory import byte_tokenizer_info, random_rows, write_shard

L = 256  # the tiny preset's seq_len


def config(tmp_path: Path, **data: object) -> Config:
    raw = load_config("tiny").to_json_dict()
    raw["data"].update({"dir": str(tmp_path / "data"), "raw_path": str(tmp_path / "raw"), **data})
    raw["checkpoint_dir"] = str(tmp_path / "ckpt")
    return Config.model_validate(raw)


def rendered(report: dict) -> str:
    console = Console(record=True, width=240)
    render_status(report, console)
    return console.export_text()


def record(name: str, step: int) -> SeenRecord:
    return SeenRecord(
        files={"bin": name}, rows=2, tokens=512, step=step, run_id="r1",
        completed="2024-07-01T12:00:00Z", val_seed=1337, val_fraction=0.01,
    )  # fmt: skip


@pytest.fixture()
def shards(tmp_path: Path) -> dict:
    data = tmp_path / "data"
    tok = byte_tokenizer_info()
    return {
        "new": write_shard(data, random_rows(3, L, last_row_len=10, seed=1), seq_len=L, source="new",
                           tokenizer=tok),
        "seen": write_shard(data, random_rows(2, L, seed=2), seq_len=L, source="old", tokenizer=tok),
        "bad": write_shard(data, random_rows(2, 128, seed=3), seq_len=128, source="short",
                           tokenizer=tok),
    }  # fmt: skip


def test_no_data_dir_and_no_checkpoints_are_said_plainly(tmp_path: Path) -> None:
    report = build_status(config(tmp_path))
    json.dumps(report)
    assert report["shards"] == [] and report["checkpoint"] is None
    assert report["notes"][0].startswith(f"no data dir {tmp_path / 'data'} yet")
    assert f"no checkpoints yet in {tmp_path / 'ckpt'}" in report["notes"]
    text = rendered(report)
    assert "no data dir" in text and "latest checkpoint: none yet" in text


def test_report_shape_states_and_totals(tmp_path: Path, shards: dict) -> None:
    cfg = config(tmp_path)
    seen = shards["seen"]
    save_seen(
        seen_path(cfg.checkpoint_path), SeenMap({seen.shard_id: record(seen.files["bin"].name, 40)})
    )
    report = build_status(cfg)
    assert json.loads(json.dumps(report)) == report
    assert {"config", "shards", "totals", "checkpoint", "notes"} <= set(report)
    assert report["config"] == "tiny" and report["tokenizer"]["verified"]
    by_name = {s["name"]: s for s in report["shards"]}
    for s in report["shards"]:
        assert {"name", "shard_id", "files", "state", "reason", "rows", "tokens", "step"} <= set(s)
    new, old, bad = (by_name[shards[k].stem] for k in ("new", "seen", "bad"))
    assert new["state"] == "new" and new["files"] == {
        "jsonl": shards["new"].files["jsonl"].name, "bin": shards["new"].files["bin"].name
    }  # fmt: skip
    assert (new["rows"], new["tokens"]) == (3, 2 * L + 10)
    assert new["train_rows"] + new["val_rows"] == 3
    assert old["state"] == "seen" and old["step"] == 40 and old["run_id"] == "r1"
    assert bad["state"] == "invalid" and bad["reason"].startswith("seq_len mismatch")
    totals = report["totals"]
    assert totals["new_rows"] == new["train_rows"] and totals["new_tokens"] == new["train_tokens"]
    assert (totals["seen_rows"], totals["seen_tokens"]) == (2, 512)
    assert totals["states"]["invalid"] == 1 and totals["shards"] == 3

    text = rendered(report)
    assert "seen @ step 40" in text and "invalid: seq_len mismatch: shard has 128" in text
    assert shards["new"].stem in text and "jsonl+bin" in text
    assert "no checkpoints yet" in text


def test_checkpoint_seen_map_wins_and_pending_run_is_shown(tmp_path: Path, shards: dict) -> None:
    cfg = config(tmp_path)
    new = shards["new"]
    ckpt = {
        "step": 120, "tokens_seen": 30720, "path": str(tmp_path / "ckpt" / "step-00000120"),
        "time": "2024-07-02T08:00:00Z",
        "pending_run": {"run_id": "run9", "shards": [new.shard_id], "steps_done": 120,
                        "steps_total": 300},
        "seen": SeenMap({shards["seen"].shard_id: record("x.bin", 100)}).to_dict(),
    }  # fmt: skip
    report = build_status(cfg, checkpoint=ckpt)
    assert "seen" not in report["checkpoint"] and report["checkpoint"]["step"] == 120
    by_name = {s["name"]: s for s in report["shards"]}
    assert by_name[shards["seen"].stem]["step"] == 100
    assert by_name[new.stem]["pending"] is True
    text = rendered(report)
    assert "latest checkpoint: step 120, 30.72K tokens trained, 2024-07-02T08:00:00Z" in text
    assert "pending run run9: step 120 of 300 on 1 shard(s)" in text
    assert "in the pending run" in text


def test_verify_checks_digests(tmp_path: Path, shards: dict) -> None:
    b = shards["new"].files["bin"]
    content = bytearray(b.read_bytes())
    content[1] ^= 1
    b.write_bytes(bytes(content))
    cfg = config(tmp_path)
    state = {s["name"]: s["state"] for s in build_status(cfg)["shards"]}
    assert state[shards["new"].stem] == "new"
    report = build_status(cfg, verify=True)
    entry = {s["name"]: s for s in report["shards"]}[shards["new"].stem]
    assert entry["state"] == "invalid" and entry["reason"].startswith("digest mismatch")
    assert report["digests_checked"] and "(digests checked)" in rendered(report)


def test_tokenizer_that_cannot_load_is_flagged(
    tmp_path: Path, shards: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from allllm.tokenizer import manager

    def offline(cls, tok_cfg, num_threads=None):
        raise TokenizerError("cannot download microsoft/phi-2 (offline)")

    monkeypatch.setattr(manager.TokenizerManager, "from_config", classmethod(offline))
    report = build_status(config(tmp_path))
    assert report["tokenizer"]["verified"] is False
    assert any(n.startswith("tokenizer unverified") for n in report["notes"])
    new = {s["name"]: s for s in report["shards"]}[shards["new"].stem]
    assert new["state"] == "new" and new["tokenizer_unverified"]
    assert "tokenizer unverified" in rendered(report)


def test_eval_only_unverified_and_missing_appear(tmp_path: Path, shards: dict) -> None:
    shards["seen"].files["meta"].unlink()
    cfg = config(tmp_path, eval_shards="new.*")
    gone = "e" * 64
    save_seen(
        seen_path(cfg.checkpoint_path),
        SeenMap({gone: record("gone.cached.256.20240101_000000.bin", 5)}),
    )
    report = build_status(cfg)
    by_name = {s["name"]: s for s in report["shards"]}
    new = by_name[shards["new"].stem]
    assert new["eval_only"] and new["train_rows"] == 0 and new["val_rows"] == 3
    assert report["totals"]["new_rows"] == 0 and report["totals"]["eval_rows"] == 3
    assert by_name[shards["seen"].stem]["state"] == "unverified"
    missing = by_name["gone.cached.256.20240101_000000"]
    assert missing["state"] == "missing" and missing["step"] == 5
    assert report["totals"]["missing_tokens"] == 512
    text = rendered(report)
    assert "(eval only)" in text and "missing (seen @ step 5)" in text
    assert "--trust-unverified" in text
    trusted = build_status(cfg, trust_unverified=True)
    assert {s["name"]: s for s in trusted["shards"]}[shards["seen"].stem]["state"] == "new"


def test_broken_seen_file_is_reported_not_repaired(tmp_path: Path, shards: dict) -> None:
    cfg = config(tmp_path)
    path = seen_path(cfg.checkpoint_path)
    path.parent.mkdir(parents=True)
    path.write_text("{broken")
    with pytest.raises(DataError, match="seen records unreadable"):
        build_status(cfg)
    ckpt = {"step": 1, "tokens_seen": 1, "path": "p", "pending_run": None, "seen": {}}
    report = build_status(cfg, checkpoint=ckpt)
    assert any("using the latest checkpoint's map" in n for n in report["notes"])
    assert path.read_text() == "{broken"
