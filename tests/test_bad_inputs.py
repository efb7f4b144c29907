"""Bad inputs through the CLI: a one-line error or a skip with a reason; no traceback, no code run,
nothing already there damaged."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from cli_helpers import run_cli
from train_helpers import make_workspace

MARKER = "pwned-marker"


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code, out, err = run_cli(args, capsys)
    assert "Traceback" not in out + err
    return code, out, err


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture()
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALLLLM_DEBUG", raising=False)
    torch.set_num_threads(1)
    return make_workspace(tmp_path, n_files=2, words=400)


def tokenized(ws: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Path]:
    assert run(["tokenize", "--model", "micro", "-q"], capsys)[0] == 0
    return {p.name.split(".")[0]: p for p in (ws / "data").glob("*.bin")}


class Evil:
    """Unpickling this would create the marker file."""

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {MARKER}",))


def evil_torch_file(path: Path) -> None:
    """A zip laid out like torch.save's, whose data.pkl would run a command."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(Evil(), protocol=2))
        zf.writestr("archive/version", "3\n")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("truncate", "truncated"),
        ("grow", "size mismatch"),
        ("flip", "digest"),
    ],
)
def test_damaged_bin_is_skipped_with_its_reason(
    ws: Path, capsys: pytest.CaptureFixture[str], damage: str, reason: str
) -> None:
    bins = tokenized(ws, capsys)
    path = bins["part0"]
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[:-10])
    elif damage == "grow":
        path.write_bytes(data + b"\0\0")
    else:
        data[100] ^= 0xFF
        path.write_bytes(data)
    damaged = path.read_bytes()
    code, _, err = run(["train", "--model", "micro", "--only-new", "--max-steps", "1"], capsys)
    assert code == 0
    assert "skipping part0" in err and reason in err
    assert path.read_bytes() == damaged  # never "repaired" behind the user's back


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not json\n", ".jsonl:2:"),
        ("[1.5, 2]\n", ".jsonl:2:"),
        ("[-1, 2]\n", ".jsonl:2:"),
        ("[999, 2]\n", ".jsonl:2:"),
        ("[" + ",".join(["65"] * 40) + "]\n", ".jsonl:2:"),
    ],
    ids=["non-json", "float", "negative", "id-over-vocab", "row-too-long"],
)
def test_bad_jsonl_rows_without_meta_are_refused_when_trusted(
    ws: Path, capsys: pytest.CaptureFixture[str], line: str, reason: str
) -> None:
    name = "hand.cached.32.20240101_000000.jsonl"
    (ws / "data").mkdir(exist_ok=True)
    (ws / "data" / name).write_text("[" + ",".join(["65"] * 32) + "]\n" + line)
    code, out, _ = run(["status", "--model", "micro", "--json", "--trust-unverified"], capsys)
    assert code == 0
    (shard,) = json.loads(out)["shards"]
    assert shard["state"] == "invalid" and reason in shard["reason"]
    code, _, err = run(["train", "--model", "micro", "--only-new", "--trust-unverified"], capsys)
    assert code == 0 and "skipping hand" in err


def test_malicious_torch_save_bin_never_runs(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (ws / "data").mkdir(exist_ok=True)
    evil_torch_file(ws / "data" / "old.cached.32.20240101_000000.bin")
    code, out, _ = run(["status", "--model", "micro", "--json", "--trust-unverified"], capsys)
    assert code == 0
    (shard,) = json.loads(out)["shards"]
    assert shard["state"] == "invalid"
    assert not (ws / MARKER).exists()


def test_malicious_optimizer_state_never_runs(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokenized(ws, capsys)
    assert (
        run(["train", "--model", "micro", "--only-new", "--max-steps", "4", "-q"], capsys)[0] == 0
    )
    opt = ws / "checkpoints/micro/step-00000004/optimizer.pt"
    evil_torch_file(opt)
    code, _, err = run(["train", "--model", "micro", "--only-new", "--max-steps", "1"], capsys)
    assert code == 1 and "optimizer.pt" in one_error(err) and "--reset-optimizer" in err
    assert not (ws / MARKER).exists()
    code, _, _ = run(
        ["train", "--model", "micro", "--only-new", "--max-steps", "1", "--reset-optimizer", "-q"],
        capsys,
    )
    assert code == 0 and not (ws / MARKER).exists()


@pytest.mark.parametrize(
    "content",
    [
        '{"format_version": 2, "shards": {',
        '{"format_version": 2, "shards": {"' + "a" * 64 + '": {"rows": "x"}}}',
    ],
    ids=["truncated", "hand-edited"],
)
def test_broken_seen_records(ws: Path, capsys: pytest.CaptureFixture[str], content: str) -> None:
    seen = ws / "checkpoints/micro/seen_datasets.json"
    seen.parent.mkdir(parents=True)
    seen.write_text(content)
    tokenized(ws, capsys)
    code, _, err = run(["train", "--model", "micro", "--only-new"], capsys)  # no checkpoint yet
    assert code == 1 and "seen records unreadable" in one_error(err)
    assert seen.read_text() == content  # never silently overwritten
    seen.unlink()
    assert run(["train", "--model", "micro", "--only-new", "-q"], capsys)[0] == 0
    good = json.loads(seen.read_text())
    seen.write_text(content)
    code, _, err = run(["train", "--model", "micro", "--only-new"], capsys)
    assert code == 0 and "rebuilt" in err
    assert json.loads(seen.read_text()) == good  # rebuilt from the checkpoint, nothing retrained
    assert list(seen.parent.glob("seen_datasets.json.corrupt-*"))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"bogus": 1}, "bogus: unknown key"),
        ({"model": {"hidden_size": "wide"}}, "model.hidden_size"),
        ({"model": {"vocab_size": 10**13}}, "model.vocab_size"),
        ({"train": {"batch_size": 10**9}}, "train.batch_size"),
        ({"name": "../../etc"}, "name"),
    ],
)
def test_bad_configs(
    ws: Path, capsys: pytest.CaptureFixture[str], edit: dict, expected: str
) -> None:
    path = ws / "configs/micro.json"
    cfg = json.loads(path.read_text())
    for key, value in edit.items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))
    for verb in (["tokenize"], ["train"], ["status"]):
        code, _, err = run([*verb, "--model", "micro"], capsys)
        assert code == 1 and expected in one_error(err)


def test_text_that_is_not_utf8(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (ws / "data/raw/latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    code, _, err = run(["tokenize", "--model", "micro"], capsys)
    assert code == 1
    line = one_error(err)
    assert "latin1.txt" in line and "byte offset 3" in line and "on_decode_error" in line
    assert not list((ws / "data").glob("*.meta.json"))


def test_empty_file_is_skipped_with_a_warning(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (ws / "data/raw/empty.txt").write_text("")
    code, _, err = run(["tokenize", "--model", "micro"], capsys)
    assert code == 0 and "empty.txt: empty file, skipped" in err


def test_symlink_loop_in_raw_folder(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.symlink("..", ws / "data/raw/loop")
    code, _, err = run(["tokenize", "--model", "micro"], capsys)
    assert code == 0 and "loop" in err


@pytest.mark.parametrize("what", ["data.dir", "checkpoint_dir"])
def test_unwritable_dirs(ws: Path, capsys: pytest.CaptureFixture[str], what: str) -> None:
    blocker = ws / "a-file"
    blocker.write_text("not a folder")
    path = ws / "configs/micro.json"
    cfg = json.loads(path.read_text())
    if what == "data.dir":
        cfg["data"]["dir"] = "a-file/data"
        verb = ["tokenize", "--model", "micro"]
    else:
        cfg["checkpoint_dir"] = "a-file/ckpt"
        tokenized(ws, capsys)
        verb = ["train", "--model", "micro", "--only-new"]
    path.write_text(json.dumps(cfg))
    code, _, err = run(verb, capsys)
    assert code == 1 and "a-file" in one_error(err)
    assert blocker.read_text() == "not a folder"
