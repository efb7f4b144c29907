"""Raw corpora as they ship: JSON lines in ``.jsonl`` / ``.json``, text, each plain, gzip or zstd.

The ids of every record equal the backend's own encoding of that record (computed here from
the records themselves, not through the reader), zstd with the large windows SlimPajama and
DCLM use reads, and broken input is one line naming the file and how far it got.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from allllm.data.raw.find import SUFFIXES, resolve_sources, source_kind
from allllm.data.raw.read import iter_documents
from allllm.data.tokenize.run import tokenize
from allllm.errors import DataError
from allllm.tokenizer.manager import TokenizerManager
from cli_helpers import run_cli
from tokenize_helpers import check_all, make_config, real_text, whole_document_ids, write_raw

zstandard = pytest.importorskip("zstandard")


def zst(data: bytes, *, window_log: int | None = None, frames: int = 1) -> bytes:
    """zstd-compressed ``data`` written as a stream (no content size in the header), in
    ``frames`` frames; ``window_log`` 28 is what the default decoder limit refuses."""
    params = zstandard.ZstdCompressionParameters.from_level(
        3, window_log=window_log or 0, write_content_size=False
    )
    out = io.BytesIO()
    step = -(-len(data) // frames)
    for k in range(frames):
        with zstandard.ZstdCompressor(compression_params=params).stream_writer(
            out, closefd=False
        ) as writer:
            writer.write(data[k * step : (k + 1) * step])
    return out.getvalue()


def records(n: int, start: int = 0) -> list[dict]:
    return [{"id": k, "text": real_text(700, start=start + k)} for k in range(n)] + [
        {"id": -1, "text": "   "}  # whitespace-only: skipped
    ]


def jsonl(recs: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode()


def test_every_format_has_every_codec() -> None:
    for fmt in (".txt", ".jsonl", ".json"):
        for codec in ("", ".gz", ".zst", ".zstd"):
            assert source_kind("X" + fmt + codec.upper()) is not None, fmt + codec
    assert source_kind("a.json.zst") == ("jsonl", "zstd")
    assert source_kind("a.txt.gz") == ("txt", "gzip")
    assert source_kind("a.parquet.gz") is None and len(SUFFIXES) == 14
    assert source_kind("A.PARQUET") == ("parquet", None) and source_kind("x.arrow")[0] == "arrow"


def test_each_record_gets_the_backends_own_ids(workspace: Path) -> None:
    kinds = {
        "a.jsonl.zst": (records(5, 0), lambda b: zst(b, window_log=28, frames=3)),
        "b.json.gz": (records(4, 10), gzip.compress),
        "c.json": (records(3, 20), lambda b: b),
        "d.jsonl.zstd": (records(3, 30), zst),
    }
    for name, (recs, pack) in kinds.items():
        write_raw(name, pack(jsonl(recs)))
    text = real_text(5000, start=40)
    write_raw("e.txt.zst", zst(text.encode(), window_log=28))
    cfg = make_config(document_boundary="file")
    tok = TokenizerManager.from_config(cfg.tokenizer)
    tokenize(cfg)
    shards = {Path(s.meta.sources[0].path).name: s for s in check_all(cfg.data_dir, cfg, tok)}
    assert set(shards) == {*kinds, "e.txt.zst"}
    for name, (recs, _) in kinds.items():
        texts = [r["text"] for r in recs if r["text"].strip()]
        expected = whole_document_ids(texts, tok, cfg)  # from the records, not the reader
        assert np.array_equal(shards[name].ids, expected), name
        assert shards[name].meta.n_documents == len(texts)
    assert np.array_equal(shards["e.txt.zst"].ids, whole_document_ids([text], tok, cfg))


def test_zstd_with_a_large_window_and_no_content_size_reads(tmp_path: Path) -> None:
    data = jsonl(records(40))
    blob = zst(data, window_log=28)
    with pytest.raises(zstandard.ZstdError):  # what the default decoder limit does
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read()
    path = tmp_path / "big-window.jsonl.zst"
    path.write_bytes(blob)
    (source,) = resolve_sources([str(path)])
    docs = list(iter_documents(source, boundary="file"))
    assert docs == [r["text"] for r in records(40) if r["text"].strip()]


@pytest.mark.parametrize(
    "name, pack, expect",
    [
        ("cut.jsonl.zst", zst, r"broken zstd data after \d+ decompressed bytes .*truncated"),
        ("cut.jsonl.gz", gzip.compress, r"broken gzip data after \d+ decompressed bytes"),
        ("cut.txt.zst", zst, r"broken zstd data"),
    ],
)
def test_a_file_cut_at_60_percent_is_one_line_and_keeps_older_shards(
    workspace: Path, capsys: pytest.CaptureFixture[str], name: str, pack, expect: str
) -> None:
    write_raw("good.jsonl", jsonl(records(3)))
    cfg_json = make_config().model_dump(mode="json")
    Path("configs").mkdir()
    Path("configs/m.json").write_text(json.dumps({**cfg_json, "name": "m"}))
    code, _, err = run_cli(["tokenize", "--model", "m", "--quiet"], capsys)
    assert code == 0, err
    before = sorted(os.listdir("data"))
    blob = pack(jsonl(records(60)))
    write_raw(name, blob[: int(len(blob) * 0.6)])
    code, _, err = run_cli(["tokenize", "--model", "m", "--quiet"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert name in err
    assert re.search(expect, err), err
    assert sorted(os.listdir("data")) == before  # the data/ listing is unchanged


def test_a_file_holding_one_json_array_is_refused_with_a_hint(tmp_path: Path) -> None:
    for text in (json.dumps(records(2)), json.dumps(records(2), indent=2)):
        path = tmp_path / "array.json"
        path.write_text(text)
        (source,) = resolve_sources([str(path)])
        with pytest.raises(DataError, match=r"holds one JSON array.*jq -c '\.\[\]'") as err:
            list(iter_documents(source, boundary="file"))
        assert "\n" not in str(err.value)


def test_a_record_that_is_not_a_string_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json.zst"
    path.write_bytes(zst(jsonl([{"text": "fine"}, {"text": "also fine"}, {"text": 42}])))
    (source,) = resolve_sources([str(path)])
    with pytest.raises(DataError, match=r"bad\.json\.zst: line 3 .*is a number, not a string"):
        list(iter_documents(source, boundary="file"))


def test_reruns_and_touch_make_no_new_shard_and_a_new_file_is_all_that_is_read(
    workspace: Path,
) -> None:
    write_raw("a.jsonl.zst", zst(jsonl(records(3))))
    write_raw("b.json.gz", gzip.compress(jsonl(records(3, 5))))
    cfg = make_config()
    first = tokenize(cfg)
    assert len(first.shards) == 2
    assert not tokenize(cfg).shards  # idempotent
    for name in ("a.jsonl.zst", "b.json.gz"):
        path = Path("data/raw") / name
        os.utime(path, (time.time() + 5, time.time() + 5))
    assert not tokenize(cfg).shards  # touch: same bytes, no new shard
    write_raw("c.txt.zst", zst(real_text(2000, start=3).encode()))
    third = tokenize(cfg)
    assert [Path(s.sources[0]).name for s in third.shards] == ["c.txt.zst"]
