"""Bad input: a clear one-line error or a skip with a reason — and nothing lost.

Every failure leaves the data dir as it was: older shards untouched and still
valid, no partial shard a scan could see, no journal entry, no temporary file.
"""

from __future__ import annotations

import errno
import gc
import json
from pathlib import Path

import numpy as np
import pytest

from allllm.config import Config, TokenizerConfig
from allllm.data.raw import find as raw_find
from allllm.data.registry import scan_shards
from allllm.data.tokenize import journal
from allllm.data.tokenize import write as shard_writer
from allllm.data.tokenize.run import tokenize
from allllm.data.tokenize.write import ShardWriter
from allllm.errors import DataError, TokenizerError
from allllm.tokenizer.manager import TokenizerManager
from tokenize_helpers import (
    check_all,
    make_config,
    real_text,
    shard_stems,
    snapshot,
    spec_for,
    spy_on_encoder,
    whole_document_ids,
    write_raw,
)

BYTE = TokenizerConfig(backend="byte")


@pytest.fixture()
def tok() -> TokenizerManager:
    return TokenizerManager.from_config(BYTE)


@pytest.fixture()
def older(workspace: Path) -> tuple[Config, dict[str, str]]:
    """A data dir that already holds a valid shard, and a snapshot of its files."""
    write_raw("old.txt", real_text(2000, start=1))
    cfg = make_config()
    tokenize(cfg)
    return cfg, snapshot(cfg.data_dir)


def assert_nothing_lost(cfg: Config, before: dict[str, str], tok: TokenizerManager) -> None:
    """Older shards untouched and valid; nothing partial, no journal, no temporary files."""
    assert snapshot(cfg.data_dir) == before
    scan = scan_shards(cfg.data_dir, spec_for(cfg, tok), verify=True)
    assert [e.state for e in scan.shards] == ["new"] and scan.journaled == []
    assert journal.journaled_stems(cfg.data_dir) == set()
    check_all(cfg.data_dir, cfg, tok)


def test_missing_input_is_a_one_line_error(workspace: Path) -> None:
    with pytest.raises(DataError, match=r"data.raw_path 'data/raw': no such file or folder"):
        tokenize(make_config())
    with pytest.raises(DataError, match=r"'nope/\*.txt': the pattern matches nothing"):
        tokenize(make_config(), inputs=["nope/*.txt"])
    assert not Path("data").exists()  # nothing was created


def test_unreadable_and_empty_files_are_skipped_with_a_reason(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, tok: TokenizerManager
) -> None:
    write_raw("good.txt", "some text\n")
    write_raw("empty.txt", "")
    locked = write_raw("locked.txt", "cannot be read\n")
    Path("data/raw/broken.txt").symlink_to("missing-target.txt")
    real_open = open

    def deny(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(path).name == "locked.txt":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(raw_find, "open", deny, raising=False)  # root can read any file: pretend
    cfg = make_config()
    summary = tokenize(cfg)
    assert [s.sources for s in summary.shards] == [["data/raw/good.txt"]]
    warnings = "\n".join(summary.warnings)
    assert "data/raw/empty.txt: empty file, skipped" in warnings
    assert f"{Path('data/raw') / locked.name}: cannot read (Permission denied), skipped" in warnings
    assert "data/raw/broken.txt: broken symlink" in warnings
    check_all(cfg.data_dir, cfg, tok)


def test_only_empty_files_is_an_error(workspace: Path) -> None:
    write_raw("empty.txt", "")
    with pytest.raises(DataError, match=r"no raw text in data.raw_path data/raw .*1 empty file"):
        tokenize(make_config())


def test_whitespace_only_text_writes_no_shard_and_says_so(workspace: Path) -> None:
    write_raw("blank.txt", "  \n\t\n\n")
    cfg = make_config()
    summary = tokenize(cfg)
    assert summary.shards == []
    assert "data/raw/blank.txt: no text to tokenize (only whitespace), no shard written" in (
        summary.warnings
    )
    assert shard_stems(cfg.data_dir) == [] and journal.journaled_stems(cfg.data_dir) == set()


@pytest.mark.parametrize("boundary", ["file", "line"])
def test_invalid_utf8_names_file_and_byte_offset(
    older: tuple[Config, dict[str, str]], tok: TokenizerManager, boundary: str
) -> None:
    cfg, before = older
    write_raw("bad.txt", "")
    Path("data/raw/bad.txt").write_bytes(b"fine text\n" * 500 + b"caf\xe9 au lait\n")
    cfg = make_config(document_boundary=boundary)
    with pytest.raises(DataError) as err:
        tokenize(cfg, inputs=["data/raw/bad.txt"], chunk_bytes=512)
    assert err.value.one_line().startswith(
        "data/raw/bad.txt: invalid UTF-8 at byte offset 5003 (0xe9)"
    )
    assert_nothing_lost(make_config(), before, tok)
    assert gc.isenabled()  # the encoder's pause of the cyclic GC ends with the error too
    replace = make_config(on_decode_error="replace", document_boundary=boundary)
    summary = tokenize(replace, inputs=["data/raw/bad.txt"])
    assert len(summary.shards) == 1


def test_bad_jsonl_record_names_file_and_line(
    older: tuple[Config, dict[str, str]], tok: TokenizerManager
) -> None:
    cfg, before = older
    lines = [json.dumps({"text": "ok"}), json.dumps({"body": "x"})]
    write_raw("recs.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(
        DataError, match=r"data/raw/recs.jsonl: line 2 \(byte 15\): no field 'text'"
    ):
        tokenize(cfg)
    assert_nothing_lost(cfg, before, tok)


HUGE_LINE = "ab cd, ef! " * 3000  # 33,000 characters, no newline: no safe cut point
BOUNDS = {"segment_chars": 256, "batch_chars": 1024, "chunk_bytes": 1024}


def test_a_huge_line_is_cut_anyway_with_bounded_memory_and_a_warning(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, tiktoken_tokenizer_config: TokenizerConfig
) -> None:
    write_raw("huge.txt", "Start\n" + HUGE_LINE + "\nEnd\n")
    texts = spy_on_encoder(monkeypatch)
    cfg = make_config(tiktoken_tokenizer_config)
    tok = TokenizerManager.from_config(tiktoken_tokenizer_config)
    summary = tokenize(cfg, max_document_chars=4096, **BOUNDS)
    (warning,) = [w for w in summary.warnings if "without a safe cut point" in w]
    assert warning.startswith("data/raw/huge.txt: more than 4,096 characters without a safe cut")
    assert max(map(len, texts)) <= 4096 + 1024  # held at most max_document_chars (+ a piece)
    assert "".join(texts) == "Start\n" + HUGE_LINE + "\nEnd\n"
    (shard,) = check_all(cfg.data_dir, cfg, tok)
    assert tok.decode(shard.ids.tolist()) == "Start\n" + HUGE_LINE + "\nEnd\n"


def test_a_huge_line_is_no_problem_for_the_byte_tokenizer(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, tok: TokenizerManager
) -> None:
    write_raw("huge.txt", HUGE_LINE)
    texts = spy_on_encoder(monkeypatch)
    cfg = make_config()
    summary = tokenize(cfg, max_document_chars=4096, **BOUNDS)
    assert summary.warnings == [] and max(map(len, texts)) <= 2 * 256 + 1024
    (shard,) = check_all(cfg.data_dir, cfg, tok)
    assert np.array_equal(shard.ids, whole_document_ids([HUGE_LINE], tok, cfg))


def test_a_huge_document_is_a_clear_error_for_sentencepiece(
    older: tuple[Config, dict[str, str]], sp_tokenizer_config: TokenizerConfig, tok
) -> None:
    cfg, before = older
    write_raw("huge.txt", HUGE_LINE)
    sp_cfg = make_config(sp_tokenizer_config, dir="data")
    with pytest.raises(DataError) as err:
        tokenize(sp_cfg, inputs=["data/raw/huge.txt"], max_document_chars=4096, **BOUNDS)
    assert err.value.one_line() == (
        "data/raw/huge.txt: a document is longer than 4,096 characters and this tokenizer "
        "(SentencePiece) cannot cut a document safely — set data.document_boundary to "
        '"blank_line" or "line", or split the text'
    )
    assert journal.journaled_stems(cfg.data_dir) == set()
    assert snapshot(cfg.data_dir) == before


def test_unwritable_data_dir(workspace: Path) -> None:
    write_raw("a.txt", "text\n")
    Path("blocker").write_text("a file, not a folder")
    with pytest.raises(DataError, match="cannot create data dir blocker/data"):
        tokenize(make_config(dir="blocker/data"))
    with pytest.raises(DataError, match=r"data\.dir blocker is not a directory"):
        tokenize(make_config(dir="blocker"))


def test_a_write_refused_mid_shard_keeps_nothing(
    older: tuple[Config, dict[str, str]], monkeypatch: pytest.MonkeyPatch, tok
) -> None:
    cfg, before = older
    write_raw("new.txt", real_text(3000, start=2))

    def refuse(self, data):  # type: ignore[no-untyped-def]
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(shard_writer._HashingFile, "write", refuse)
    with pytest.raises(DataError, match=r"cannot write shard new\.cached.* Permission denied"):
        tokenize(cfg)
    assert_nothing_lost(cfg, before, tok)


def _disk_full_after(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """Writes to shard files fail with ENOSPC once ``limit`` bytes were written in all."""
    real_write = shard_writer._HashingFile.write
    written = [0]

    def write(self, data):  # type: ignore[no-untyped-def]
        if written[0] + len(data) > limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        written[0] += len(data)
        real_write(self, data)

    monkeypatch.setattr(shard_writer._HashingFile, "write", write)


@pytest.mark.parametrize("limit", [0, 3000, 20000])
def test_disk_full_mid_write_keeps_nothing_partial(
    older: tuple[Config, dict[str, str]], monkeypatch: pytest.MonkeyPatch, tok, limit: int
) -> None:
    cfg, before = older
    write_raw("new.txt", real_text(8000, start=2))
    with monkeypatch.context() as patch, pytest.raises(DataError) as err:
        _disk_full_after(patch, limit)
        tokenize(cfg, batch_chars=1000, segment_chars=200)
    assert err.value.one_line().startswith("cannot write shard new.cached.64.")
    assert "the disk is full — free space" in err.value.one_line()
    assert_nothing_lost(cfg, before, tok)


def test_disk_full_reported_by_a_background_sync(
    older: tuple[Config, dict[str, str]], monkeypatch: pytest.MonkeyPatch, tok
) -> None:
    """Data is fdatasynced in the background while encoding goes on; its errors still count."""
    cfg, before = older
    write_raw("new.txt", real_text(8000, start=2))
    synced: list[int] = []

    def full(fd: int) -> None:
        synced.append(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch, pytest.raises(DataError, match="the disk is full"):
        patch.setattr(shard_writer._HashingFile, "SYNC_BYTES", 2000)
        patch.setattr(shard_writer.os, "fdatasync", full)
        tokenize(cfg, batch_chars=1000, segment_chars=200)
    assert synced
    assert_nothing_lost(cfg, before, tok)


@pytest.mark.parametrize("stage", ["journal", "close", "meta"])
def test_disk_full_outside_the_data_files(
    older: tuple[Config, dict[str, str]], monkeypatch: pytest.MonkeyPatch, tok, stage: str
) -> None:
    cfg, before = older
    write_raw("new.txt", real_text(3000, start=2))

    def full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch, pytest.raises(DataError, match="the disk is full"):
        if stage == "journal":
            patch.setattr(shard_writer.journal, "begin_new", full)
        elif stage == "meta":
            patch.setattr(ShardWriter, "_write_meta", full)
        else:  # a full disk may show only when the data is flushed and fsynced
            patch.setattr(shard_writer._HashingFile, "close", full)
        tokenize(cfg)
    assert_nothing_lost(cfg, before, tok)


@pytest.mark.parametrize(
    ("tok_cfg", "message"),
    [
        ({"backend": "hf", "path": "data/raw/a.txt"}, "not a loadable tokenizer.json"),
        ({"backend": "sentencepiece", "path": "nope.model"}, "no such SentencePiece .model"),
        ({"backend": "tiktoken", "path": "no_such_encoding"}, "unknown tiktoken encoding"),
    ],
)
def test_a_tokenizer_that_cannot_be_loaded(workspace: Path, tok_cfg: dict, message: str) -> None:
    write_raw("a.txt", "text\n")
    cfg = make_config(tok_cfg, vocab_size=1024)
    with pytest.raises(TokenizerError, match=message):
        tokenize(cfg)
    assert not Path("data").joinpath(".allllm").exists()


def test_more_tokenizer_ids_than_model_vocab_is_refused_before_writing(workspace: Path) -> None:
    write_raw("a.txt", "text\n")
    cfg = make_config(vocab_size=256)  # the byte tokenizer has 259 ids
    with pytest.raises(
        TokenizerError,
        match=r"uses ids up to 258 but model\.vocab_size is 256 — set model\.vocab_size",
    ):
        tokenize(cfg)
    assert sorted(p.name for p in Path("data").iterdir()) == ["raw"]


@pytest.mark.parametrize("bad_id", [300, 400])
def test_an_id_out_of_range_aborts_the_shard(
    older: tuple[Config, dict[str, str]], monkeypatch: pytest.MonkeyPatch, tok, bad_id: int
) -> None:
    """Defence in depth: a backend that breaks its own id range never gets a shard written.

    The byte tokenizer has 259 ids; the model here has 320 embedding rows.
    """
    cfg, before = older
    write_raw("new.txt", "text\n")
    real_lists, real_arrays = TokenizerManager.encode_batch, TokenizerManager.encode_batch_arrays

    def lists(self, texts):  # type: ignore[no-untyped-def]
        out = real_lists(self, texts)
        out[0][0] = bad_id
        return out

    def arrays(self, texts):  # type: ignore[no-untyped-def]
        out = real_arrays(self, texts)
        out[0][0] = bad_id
        return out

    expected = (
        f"the tokenizer produced id {bad_id}, but ids must lie in 0..258 (model.vocab_size 320, "
        "tokenizer id range 259); shard new.cached.64."
    )
    with monkeypatch.context() as patch, pytest.raises(DataError) as err:
        patch.setattr(TokenizerManager, "encode_batch", lists)
        patch.setattr(TokenizerManager, "encode_batch_arrays", arrays)
        tokenize(cfg)
    assert err.value.one_line().startswith(expected)
    assert gc.isenabled()  # the encoder's pause of the cyclic GC ended with the error
    assert_nothing_lost(cfg, before, tok)
