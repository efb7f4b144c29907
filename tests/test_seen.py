"""seen_datasets.json (docs/design.md: seen records and runs): strict reads, atomic writes, rebuild from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from allllm.data import seen as seen_mod
from allllm.data.seen import (
    SeenMap,
    SeenRecord,
    load_seen,
    read_seen,
    reconcile,
    save_seen,
    seen_path,
)
from allllm.errors import DataError

A, B = "a" * 64, "b" * 64


def rec(step: int, name: str = "x.cached.16.20240701_000000.bin") -> SeenRecord:
    return SeenRecord(
        files={"bin": name}, rows=3, tokens=41, step=step, run_id="r1",
        completed="2024-07-01T12:00:00Z", val_seed=7, val_fraction=0.25,
    )  # fmt: skip


@pytest.fixture()
def path(tmp_path: Path) -> Path:
    return seen_path(tmp_path / "checkpoints" / "m")


def test_round_trip_is_the_design_format(path: Path) -> None:
    m = SeenMap({B: rec(9), A: rec(4)})
    save_seen(path, m)
    data = json.loads(path.read_text())
    assert data["format_version"] == 3
    assert list(data["shards"]) == [A, B]  # training order
    assert data["shards"][A] == {
        "files": {"bin": "x.cached.16.20240701_000000.bin"}, "rows": 3, "tokens": 41, "step": 4,
        "run_id": "r1", "completed": "2024-07-01T12:00:00Z", "val_seed": 7, "val_fraction": 0.25,
    }  # fmt: skip
    assert load_seen(path) == m and A in m and m.get(B).step == 9


def test_version_1_records_take_the_split_they_are_given(path: Path) -> None:
    """Version 1 stored no split: the reader passes the latest checkpoint's (a migration)."""
    data = SeenMap({A: rec(4)}).to_dict()
    data["format_version"] = 1
    for record in data["shards"].values():
        del record["val_seed"], record["val_fraction"]
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    got = read_seen(path, legacy_split=(1, 0.2))
    assert got[A].split == (1, 0.2) and got[A].rows == 3
    with pytest.raises(ValueError, match="legacy_split"):  # a caller's bug, not a broken file
        read_seen(path)
    data["format_version"] = 2  # version 2 must carry the split
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="val_seed: Field required"):
        read_seen(path, legacy_split=(1, 0.2))


def test_missing_file_is_empty_or_the_checkpoints_map(path: Path) -> None:
    assert len(load_seen(path)) == 0
    ckpt = SeenMap({A: rec(4)}).to_dict()
    assert load_seen(path, rebuild_from=lambda: ckpt) == SeenMap({A: rec(4)})
    assert load_seen(path, rebuild_from=lambda: ckpt["shards"]) == SeenMap({A: rec(4)})
    assert not path.exists()  # reading never writes a missing file


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["shards"][A].update(rows="3"), "rows: Input should be a valid integer"),
        # a newer format_version is not a broken file: test_format_versions.py
        (lambda d: d.update(format_version="1"), "format_version: Input should be a valid integer"),
        (lambda d: d["shards"][A].update(colour="red"), "colour: Extra inputs are not permitted"),
        (
            lambda d: d["shards"][A].update(step=-1),
            "step: Input should be greater than or equal to 0",
        ),
        (lambda d: d["shards"].update({"XYZ": d["shards"][A]}), "String should match pattern"),
        (lambda d: d.pop("format_version"), "format_version: Field required"),
    ],
)
def test_hand_edited_wrong_file_is_unreadable(path: Path, edit, message: str) -> None:
    save_seen(path, SeenMap({A: rec(4)}))
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        read_seen(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_unreadable_without_checkpoint_is_a_clear_error_and_touches_nothing(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text('{"format_version": 2, "shards": {')
    with pytest.raises(DataError) as err:
        load_seen(path, rebuild_from=lambda: None)
    line = str(err.value)
    assert "\n" not in line and str(path) in line and "invalid JSON at line 1" in line
    assert "restore seen_datasets.json from a backup" in line
    assert path.read_text() == '{"format_version": 2, "shards": {'
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_unreadable_with_checkpoint_is_rebuilt_and_the_broken_file_kept(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("garbage")
    warnings: list[str] = []
    ckpt = SeenMap({A: rec(4)})
    got = load_seen(path, rebuild_from=lambda: ckpt, warn=warnings.append)
    assert got == ckpt and read_seen(path) == ckpt
    kept = [p for p in path.parent.iterdir() if p.name.startswith("seen_datasets.json.corrupt-")]
    assert len(kept) == 1 and kept[0].read_text() == "garbage"
    assert len(warnings) == 1 and kept[0].name in warnings[0]


def test_status_style_read_does_not_repair(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("garbage")
    warnings: list[str] = []
    got = load_seen(
        path, rebuild_from=lambda: SeenMap({A: rec(4)}), repair=False, warn=warnings.append
    )
    assert A in got and path.read_text() == "garbage" and len(list(path.parent.iterdir())) == 1
    assert "using the latest checkpoint's map" in warnings[0]


def test_a_failure_mid_write_leaves_the_old_file(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = SeenMap({A: rec(4)})
    save_seen(path, old)
    before = path.read_bytes()

    def crash(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("allllm.util.atomic.os.fsync", crash)
    with pytest.raises(OSError):
        save_seen(path, old.with_records({B: rec(9)}))
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_reconcile_the_checkpoint_wins_and_differences_are_reported() -> None:
    file_map = SeenMap({A: rec(4)})
    ckpt = SeenMap({A: rec(4), B: rec(9)})
    said: list[str] = []
    assert reconcile(file_map, ckpt, warn=said.append) == ckpt
    assert len(said) == 1 and "in the checkpoint (step 9), not in the file" in said[0]
    said.clear()
    assert reconcile(file_map, None, warn=said.append) == file_map and said == []
    assert reconcile(ckpt, ckpt.to_dict(), warn=said.append) == ckpt and said == []


def test_with_records_rejects_a_non_shard_id() -> None:
    with pytest.raises(DataError):
        SeenMap().with_records({"not-an-id": rec(1)})
    assert seen_mod.SEEN_FILE == "seen_datasets.json"
