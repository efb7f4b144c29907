"""``allllm tokenize`` on the command line: the issue's end-to-end flow, output modes, errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from allllm.config import load_config
from allllm.data.tokenize import journal
from allllm.data.tokenize.run import tokenize
from allllm.data.tokenize.summary import NoProgress
from allllm.tokenizer.manager import TokenizerManager
from cli_helpers import heavy_imports_of
from cli_helpers import run_cli as run
from tokenize_helpers import (
    check_all,
    check_shard,
    documents,
    real_text,
    shard_stems,
    states,
    whole_document_ids,
    write_raw,
)


@pytest.fixture()
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALLLLM_DEBUG", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    for k in range(5):
        write_raw(f"play{k}.txt", real_text(4000 + 1000 * k, start=k))
    return tmp_path


def test_tiny_end_to_end(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Write shards per docs/design.md (shards), then: up to date, appended, changed (superseded)."""
    cfg = load_config(model="tiny")
    tok = TokenizerManager.from_config(cfg.tokenizer)
    code, out, _ = run(["tokenize", "--model", "tiny"], capsys)
    assert code == 0
    (shard,) = check_all(cfg.data_dir, cfg, tok)  # small sources share one packed shard
    names = [f"data/raw/play{k}.txt" for k in range(5)]
    assert shard.stem.startswith("packed-play0-5.cached.256.")
    assert [s.path for s in shard.meta.sources] == names
    expected = np.concatenate(
        [whole_document_ids(documents(Path(n), cfg), tok, cfg) for n in names]
    )
    assert np.array_equal(shard.ids, expected)
    assert "shards written" in out and "packed-play0-5" in out and "MB/s" in out

    code, out, _ = run(["tokenize", "--model", "tiny"], capsys)
    assert code == 0 and "everything is up to date" in out
    assert shard_stems(cfg.data_dir) == [shard.stem]

    path = Path("data/raw/play2.txt")
    size = path.stat().st_size
    with path.open("a", encoding="utf-8") as fh:
        fh.write("EPILOGUE. Enter the appended text.\n")
    code, out, _ = run(["tokenize", "--model", "tiny", "--json"], capsys)
    summary = json.loads(out)
    (added,) = summary["shards"]
    assert added["why"] == ["appended"] and added["sources"] == ["data/raw/play2.txt"]
    assert len(summary["up_to_date"]) == 4
    checked = check_shard(cfg.data_dir, added["stem"], cfg, tok)
    assert tuple(checked.meta.sources[0].byte_range) == (size, path.stat().st_size)
    appended = whole_document_ids(documents(path, cfg, start=size), tok, cfg)
    assert np.array_equal(checked.ids, appended)
    assert states(cfg, tok) == {shard.stem: "new", added["stem"]: "new"}

    Path("data/raw/play4.txt").write_text("Rewritten entirely.\n", encoding="utf-8")
    code, out, _ = run(["tokenize", "--model", "tiny", "--json"], capsys)
    summary = json.loads(out)
    (redone,) = summary["shards"]
    assert redone["sources"] == names  # the whole pack, tokenized together again
    assert sorted(summary["superseded"]) == sorted([shard.stem, added["stem"]])
    got = states(cfg, tok)
    assert got == {shard.stem: "superseded", added["stem"]: "superseded", redone["stem"]: "new"}
    checked = check_shard(cfg.data_dir, redone["stem"], cfg, tok)
    expected = np.concatenate(
        [whole_document_ids(documents(Path(n), cfg), tok, cfg) for n in names]
    )
    assert np.array_equal(checked.ids, expected)


def test_json_summary_fields(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["tokenize", "--model", "tiny", "--json"], capsys)
    assert code == 0 and err == ""
    summary = json.loads(out)
    for key in ("sources", "up_to_date", "shards", "superseded", "cleaned", "warnings", "bytes"):
        assert key in summary
    assert summary["sources"] == 5 and summary["documents"] == 5
    assert summary["tokens"] == summary["shards"][0]["tokens"] > 0
    assert summary["bytes"] == sum(p.stat().st_size for p in Path("data/raw").iterdir())
    assert summary["mb_per_s"] > 0 and summary["seconds"] > 0
    assert set(summary["timings"]) >= {"read", "encode", "render", "hash", "write"}


def test_quiet_prints_nothing(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_raw("empty.txt", "")  # a warning, silenced too
    code, out, err = run(["tokenize", "--model", "tiny", "--quiet"], capsys)
    assert (code, out, err) == (0, "", "")
    assert len(shard_stems(Path("data"))) == 1


def test_progress_and_warnings_go_to_stderr(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_raw("empty.txt", "")
    code, out, err = run(["tokenize", "--model", "tiny"], capsys)
    assert code == 0
    assert "warning: data/raw/empty.txt: empty file, skipped" in err
    assert "warning" not in out
    assert "all (1 shard)" not in err  # no progress bar when stderr is not a terminal


def test_config_input_and_bin_options(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(model="tiny").to_json_dict()
    cfg["data"].update(formats=["jsonl"], dir="shards", pack_below_bytes=0)
    Path("mine.json").write_text(json.dumps(cfg), encoding="utf-8")
    code, out, _ = run(["tokenize", "--config", "mine.json", "-i", "data/raw/play1.txt"], capsys)
    assert code == 0
    (stem,) = shard_stems(Path("shards"))
    assert sorted(p.name for p in Path("shards").glob(stem + ".*")) == [
        f"{stem}.docs",
        f"{stem}.jsonl",
        f"{stem}.meta.json",
    ]
    code, out, _ = run(
        ["tokenize", "-c", "mine.json", "-i", "data/raw/play3.txt", "--bin", "--json"], capsys
    )
    (shard,) = json.loads(out)["shards"]
    assert shard["files"] == [f"{shard['stem']}.jsonl", f"{shard['stem']}.bin"]
    mine = load_config(config="mine.json")
    check_shard(Path("shards"), shard["stem"], mine, TokenizerManager.from_config(mine.tokenizer))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-i", "nowhere.txt"],
            "error: --input 'nowhere.txt': no such file or folder — create it or fix --input",
        ),
        (["-i", "data/raw/bad.txt"], "error: data/raw/bad.txt: invalid UTF-8 at byte offset 3"),
    ],
)
def test_errors_are_one_line_exit_1(
    workspace: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    Path("data/raw/bad.txt").write_bytes(b"abc\xff\n")
    code, out, err = run(["tokenize", "--model", "tiny", "--quiet", *args], capsys)
    assert code == 1 and out == ""
    assert err.startswith(message) and err.count("\n") == 1


def test_a_second_tokenize_is_refused(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Path("data").mkdir(exist_ok=True)
    with journal.tokenize_lock(Path("data")):
        code, _, err = run(["tokenize", "--model", "tiny"], capsys)
    assert code == 1
    assert err.startswith("error: another `allllm tokenize` is writing to data — wait for it")


@pytest.mark.slow
def test_tokenize_does_not_import_torch(workspace: Path) -> None:
    assert heavy_imports_of(["tokenize", "--model", "tiny", "--quiet"]) == []
    assert len(shard_stems(Path("data"))) == 1


class Recording(NoProgress):
    def __init__(self) -> None:
        self.total = 0
        self.files: dict[str, list[int]] = {}  # name -> [announced, advanced]
        self.current = ""
        self.tokens = 0

    def begin(self, total_bytes: int, n_shards: int) -> None:
        self.total = total_bytes

    def begin_file(self, name: str, nbytes: int) -> None:
        assert name not in self.files
        self.files[name] = [nbytes, 0]
        self.current = name

    def advance(self, nbytes: int, ntokens: int) -> None:
        self.files[self.current][1] += nbytes
        self.tokens += ntokens


def test_progress_counts_every_byte_of_every_file_once(workspace: Path) -> None:
    """Per file and overall, for plain, compressed, appended and whitespace-tailed input."""
    write_raw("tail.txt", "text\n\n   \n\n\t\n")
    write_raw("zipped.txt.gz", gzip.compress(real_text(3000, start=7).encode()))
    cfg = load_config(model="tiny")
    small = {"segment_chars": 64, "batch_chars": 300, "chunk_bytes": 256}
    seen = Recording()
    summary = tokenize(cfg, progress=seen, **small)
    sizes = {str(p): p.stat().st_size for p in Path("data/raw").iterdir()}
    assert seen.files == {name: [size, size] for name, size in sizes.items()}
    assert seen.total == sum(sizes.values()) == summary.bytes
    assert seen.tokens == summary.tokens

    with Path("data/raw/play1.txt").open("a", encoding="utf-8") as fh:
        fh.write("More.\n")
    seen = Recording()
    tokenize(cfg, progress=seen, **small)
    assert seen.files == {"data/raw/play1.txt": [6, 6]} and seen.total == 6
