"""Parquet, Arrow IPC (stream and file) and ``save_to_disk`` folders as raw input.

Files are built with pyarrow here (``datasets`` is not needed; one test uses it when it is
installed). The ids of every record equal the backend's own encoding of that record, computed
from the records themselves; broken input is one line naming the file and where.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from allllm.data.raw import iter_batches, iter_documents, resolve_sources, source_identity
from allllm.data.raw.columnar import unit_count
from allllm.data.tokenize.run import tokenize
from allllm.errors import DataError
from allllm.tokenizer.manager import TokenizerManager
from cli_helpers import heavy_imports_of, run_cli
from tokenize_helpers import check_all, make_config, real_text, whole_document_ids, write_raw

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("pyarrow.ipc")  # registers pa.ipc


def texts(n: int, start: int = 0) -> list[str]:
    """``n`` real texts, with an empty and a whitespace-only record in between."""
    out = [real_text(400 + 37 * k, start=start + k) for k in range(n)]
    return [*out[: n // 2], "", *out[n // 2 :], "  \n "]


def table(values: list[str], **extra: list) -> object:
    cols = {"id": list(range(len(values))), "text": values, "url": ["u"] * len(values)}
    return pa.table({**cols, **extra})


def write_parquet(path: Path, values: list[str], row_group_size: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table(values), path, row_group_size=row_group_size)
    return path


def write_arrow(path: Path, values: list[str], *, file_format: bool, chunk: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = table(values)
    with pa.OSFile(str(path), "wb") as sink:
        new = pa.ipc.new_file if file_format else pa.ipc.new_stream
        with new(sink, t.schema) as writer:
            for rb in t.to_batches(max_chunksize=chunk):
                writer.write_batch(rb)
    return path


def save_to_disk_layout(folder: Path, values: list[str], shards: int = 2) -> None:
    """What ``Dataset.save_to_disk`` writes: Arrow *stream* files and two JSON files."""
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-len(values) // shards)
    names = []
    for k in range(shards):
        name = f"data-{k:05d}-of-{shards:05d}.arrow"
        write_arrow(folder / name, values[k * step : (k + 1) * step], file_format=False)
        names.append({"filename": name})
    (folder / "state.json").write_text(json.dumps({"_data_files": names, "_split": "train"}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {"text": {}}}))


def nonempty(values: list[str]) -> list[str]:
    return [v for v in values if v.strip()]


def test_every_columnar_kind_gets_the_backends_own_ids(workspace: Path) -> None:
    kinds = {
        "a.parquet": texts(8, 0),
        "b.arrow": texts(5, 10),  # stream format
        "c.arrow": texts(4, 20),  # file format (ARROW1)
    }
    raw = Path("data/raw")
    write_parquet(raw / "a.parquet", kinds["a.parquet"])
    write_arrow(raw / "b.arrow", kinds["b.arrow"], file_format=False)
    write_arrow(raw / "c.arrow", kinds["c.arrow"], file_format=True)
    saved = texts(6, 30)
    save_to_disk_layout(raw / "saved", saved)
    cfg = make_config(document_boundary="line")  # records are documents whatever the boundary
    tok = TokenizerManager.from_config(cfg.tokenizer)
    summary = tokenize(cfg)
    assert not summary.warnings  # state.json and dataset_info.json are not sources
    shards = {Path(s.meta.sources[0].path).name: s for s in check_all(cfg.data_dir, cfg, tok)}
    step = -(-len(saved) // 2)
    kinds["data-00000-of-00002.arrow"] = saved[:step]
    kinds["data-00001-of-00002.arrow"] = saved[step:]
    assert set(shards) == set(kinds)
    for name, values in kinds.items():
        expected = whole_document_ids(nonempty(values), tok, cfg)
        assert np.array_equal(shards[name].ids, expected), name
        assert shards[name].meta.n_documents == len(nonempty(values))
        assert shards[name].meta.text_field == "text"
    assert summary.empty_records == sum(len(v) - len(nonempty(v)) for v in kinds.values())


def test_long_records_come_in_pieces_and_reassemble(tmp_path: Path) -> None:
    values = ["é" * 5000 + "x" * 3, "short", "😀" * 3000]
    (source,) = resolve_sources([str(write_parquet(tmp_path / "long.parquet", values))])
    assert list(iter_documents(source, boundary="file", chunk_bytes=1000)) == values
    pieces = [t for b in iter_batches(source, boundary="file", chunk_bytes=1000) for t in b.texts]
    assert len(pieces) > 20 and max(len(p.encode()) for p in pieces) <= 1000


@pytest.mark.parametrize("kind", ["parquet", "stream", "file"])
def test_units_row_groups_and_record_batches_read_alone_make_the_whole(
    tmp_path: Path, kind: str
) -> None:
    values = texts(11, 3)
    if kind == "parquet":
        path = write_parquet(tmp_path / "u.parquet", values, row_group_size=4)
    else:
        path = write_arrow(tmp_path / "u.arrow", values, file_format=kind == "file", chunk=4)
    (source,) = resolve_sources([str(path)])
    n = unit_count(source)
    assert n == 4 if kind == "parquet" else n >= 3
    parts = []
    for u in range(n):
        parts += list(iter_documents(source, boundary="file", units=(u, u + 1)))
    assert parts == nonempty(values) == list(iter_documents(source, boundary="file"))


def test_reruns_touch_and_a_new_file(workspace: Path) -> None:
    raw = Path("data/raw")
    write_parquet(raw / "a.parquet", texts(4))
    save_to_disk_layout(raw / "ds", texts(4, 5))
    cfg = make_config()
    assert len(tokenize(cfg).shards) == 3
    assert not tokenize(cfg).shards  # idempotent
    later = time.time() + 5
    for path in raw.rglob("*"):
        os.utime(path, (later, later))
    assert not tokenize(cfg).shards  # touch: same bytes, no new shard
    write_parquet(raw / "b.parquet", texts(3, 9))
    assert [Path(s.sources[0]).name for s in tokenize(cfg).shards] == ["b.parquet"]
    write_parquet(raw / "a.parquet", texts(5, 1))  # changed: redone whole, old one superseded
    changed = tokenize(cfg)
    assert [s.why for s in changed.shards] == [["changed"]] and len(changed.superseded) == 1


def _corrupt_row_group(path: Path) -> None:
    """Overwrite the middle of the second row group's data pages (the footer stays valid)."""
    meta = pq.ParquetFile(path).metadata
    col = meta.row_group(1).column(meta.schema.names.index("text"))
    start = col.data_page_offset
    data = bytearray(path.read_bytes())
    for i in range(start + 8, start + col.total_compressed_size - 4):
        data[i] = 0xFF
    path.write_bytes(bytes(data))


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])


BAD = [
    ("cut.parquet", lambda p: _cut(write_parquet(p, texts(30))), r"broken Parquet data"),
    ("rg.parquet", lambda p: _corrupt_row_group(write_parquet(p, texts(30), 8)), r"row group 1"),
    ("cut.arrow", lambda p: _cut(write_arrow(p, texts(30), file_format=False)), r"broken Arrow"),
    (
        "col.parquet",
        lambda p: pq.write_table(pa.table({"body": ["a"], "id": [1]}), p),
        r"no column 'text' \(the file has 'body', 'id'\)",
    ),
    (
        "int.parquet",
        lambda p: pq.write_table(pa.table({"text": [1, 2]}), p),
        r"column 'text' is int64, not a string",
    ),
    (
        "null.arrow",
        lambda p: (
            pa.ipc.new_file(str(p), pa.schema([("text", pa.string())])).close() or _write_nulls(p)
        ),
        r"record 2: column 'text' is null",
    ),
    (
        "big.parquet",
        lambda p: write_parquet(p, ["ok", "y" * 5000, "ok"]),
        r"record 2 is 5,000 bytes, longer than data.max_document_bytes \(4,096\)",
    ),
]


def _write_nulls(path: Path) -> None:
    t = pa.table({"text": pa.array(["fine", None, "x"], pa.string())})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, t.schema) as writer:
        writer.write_table(t)


@pytest.mark.parametrize("name, make, expect", BAD, ids=[b[0] for b in BAD])
def test_bad_columnar_input_is_one_line_and_keeps_older_shards(
    workspace: Path, capsys: pytest.CaptureFixture[str], name: str, make, expect: str
) -> None:
    write_raw("good.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts(3)))
    cfg_json = make_config(max_document_bytes=4096).model_dump(mode="json")
    Path("configs").mkdir()
    Path("configs/m.json").write_text(json.dumps({**cfg_json, "name": "m"}))
    code, _, err = run_cli(["tokenize", "--model", "m", "--quiet"], capsys)
    assert code == 0, err
    before = {p: p.stat().st_mtime_ns for p in Path("data").iterdir() if p.is_file()}
    make(Path("data/raw") / name)
    code, _, err = run_cli(["tokenize", "--model", "m", "--quiet"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert name in err and re.search(expect, err), err
    after = {p: p.stat().st_mtime_ns for p in Path("data").iterdir() if p.is_file()}
    assert after == before  # the data/ listing and the older shards are unchanged


def test_invalid_utf8_in_a_column_names_the_record_or_is_replaced(tmp_path: Path) -> None:
    values = pa.array([b"good", b"bad \xff here"], pa.binary()).cast(pa.string(), safe=False)
    path = tmp_path / "utf.parquet"
    pq.write_table(pa.table({"text": values}), path)
    (source,) = resolve_sources([str(path)])
    with pytest.raises(DataError, match=r"utf\.parquet: record 2: invalid UTF-8 at byte 4"):
        list(iter_documents(source, boundary="file"))
    docs = list(iter_documents(source, boundary="file", on_decode_error="replace"))
    assert docs == ["good", "bad \ufffd here"]


def _hub_snapshot(hub: Path, revision: str, files: dict[str, bytes]) -> Path:
    """A Hugging Face cache: files in snapshots/<revision>/ are symlinks into blobs/<hash>."""
    import hashlib

    repo = hub / "datasets--org--corpus"
    snap = repo / "snapshots" / revision
    for rel, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snap / "sample"


def _parquet_bytes(tmp: Path, values: list[str]) -> bytes:
    return write_parquet(tmp / "x.parquet", values).read_bytes()


def test_a_hub_cache_new_revision_of_one_file_is_one_changed_source(
    workspace: Path, tmp_path: Path
) -> None:
    one, two = _parquet_bytes(tmp_path, texts(3)), _parquet_bytes(tmp_path, texts(3, 7))
    rev1 = _hub_snapshot(
        Path("hub"), "a" * 40, {"sample/000.parquet": one, "sample/001.parquet": two}
    )
    cfg = make_config(raw_path=str(rev1))
    assert len(tokenize(cfg).shards) == 2
    new_one = _parquet_bytes(tmp_path, texts(4, 2))
    files = {"sample/000.parquet": new_one, "sample/001.parquet": two}
    rev2 = _hub_snapshot(Path("hub"), "b" * 40, files)
    (s1,) = resolve_sources([str(rev1 / "001.parquet")])
    (s2,) = resolve_sources([str(rev2 / "001.parquet")])
    assert source_identity(s1) == source_identity(s2)  # one source across revisions
    summary = tokenize(make_config(raw_path=str(rev2)))
    assert [Path(s.sources[0]).name for s in summary.shards] == ["000.parquet"]
    assert [s.why for s in summary.shards] == [["changed"]] and len(summary.superseded) == 1
    assert [Path(p).name for p in summary.up_to_date] == ["001.parquet"]


def test_datasets_save_to_disk_when_installed(workspace: Path) -> None:
    datasets = pytest.importorskip("datasets")
    values = texts(6, 4)
    datasets.Dataset.from_dict({"text": values}).save_to_disk("data/raw/hf")
    cfg = make_config()
    tok = TokenizerManager.from_config(cfg.tokenizer)
    summary = tokenize(cfg)
    assert not summary.warnings
    ids = np.concatenate([s.ids for s in check_all(cfg.data_dir, cfg, tok)])
    assert np.array_equal(ids, whole_document_ids(nonempty(values), tok, cfg))


def test_help_imports_neither_pyarrow_nor_zstandard() -> None:
    for args in (["--help"], ["tokenize", "--help"]):
        assert heavy_imports_of(args, ("pyarrow", "zstandard")) == []
