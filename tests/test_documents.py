"""The per-document sidecar ``<stem>.docs`` (allllm.data.documents): written by tokenize, read back.

Every shard tokenize writes carries one record per document: the blake2b-128 digest of
its ids (BOS/EOS included), where it starts in the shard's token stream and which
source it came from. These tests recompute all of it from the rows and the raw text,
check that where chunks, segments and batches are cut changes nothing, that old shards
without a sidecar get the same documents from their stream, and that a damaged, newer
or missing sidecar is refused in one line, never taken for a valid one.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from allllm.config import Config, TokenizerConfig
from allllm.data import documents as documents_module
from allllm.data.documents import (
    DIGEST_ALGORITHM,
    DOC_DTYPE,
    HEADER_SIZE,
    NO_SOURCE,
    BackgroundDigester,
    DocumentDigester,
    cache_path,
    digest_ids,
    documents_from_stream,
    read_documents,
    shard_documents,
    write_documents,
)
from allllm.data.registry import ShardEntry, inspect_one, scan_shards
from allllm.data.shard_format import DocumentsInfo, shard_file, stem_taken
from allllm.data.tokenize.run import tokenize
from allllm.errors import DataError, FormatVersionError
from allllm.tokenizer.manager import TokenizerManager
from conftest import generated_text
from tokenize_helpers import (
    CheckedShard,
    check_all,
    documents,
    make_config,
    shard_stems,
    spec_for,
    write_raw,
)

BYTE = TokenizerConfig(backend="byte")
BOS_ONLY = TokenizerConfig(backend="byte", add_bos=True, add_eos=False)
NEITHER = TokenizerConfig(backend="byte", add_bos=False, add_eos=False)
BOTH = TokenizerConfig(backend="byte", add_bos=True, add_eos=True)


@pytest.fixture()
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    return ws


def _raw_folder(root: Path | None = None) -> list[Path]:
    """Small generated files (several pack into one shard) and one larger one."""
    paths = [write_raw(f"s{i}.txt", generated_text(3 + i, seed=i), root) for i in range(4)]
    paths.append(write_raw("big.txt", generated_text(60, seed=9), root))
    return paths


def _config(tok: TokenizerConfig = BYTE, boundary: str = "blank_line", **data: object) -> Config:
    return make_config(tok, document_boundary=boundary, pack_below_bytes=2000, **data)


def _sidecar(cfg: Config, shard: CheckedShard) -> np.ndarray:
    info = shard.meta.documents
    assert info is not None and info.digest == DIGEST_ALGORITHM
    path = cfg.data_dir / info.name
    assert info.name == shard_file(cfg.data_dir, shard.stem, "docs").name
    assert path.stat().st_size == info.size == HEADER_SIZE + 32 * info.count
    assert hashlib.sha256(path.read_bytes()).hexdigest() == info.sha256
    return read_documents(path, info, n_tokens=shard.meta.n_tokens)


def _spans(records: np.ndarray, n_tokens: int) -> list[tuple[int, int]]:
    starts = records["start"].astype(np.int64)
    ends = np.append(starts[1:], n_tokens)
    return list(zip(starts.tolist(), ends.tolist()))


def _text_of(ids: np.ndarray) -> str:
    """A document's text back from byte-tokenizer ids (BOS/EOS dropped)."""
    return bytes(ids[ids < 256].astype(np.uint8).tolist()).decode("utf-8")


def _tokenized(cfg: Config, **knobs: int) -> list[CheckedShard]:
    tokenize(cfg, **knobs)  # type: ignore[arg-type]
    return check_all(cfg.data_dir, cfg, TokenizerManager.from_config(cfg.tokenizer))


def _by_sources(cfg: Config, shards: list[CheckedShard]) -> dict[tuple[str, ...], np.ndarray]:
    return {tuple(s.path for s in sh.meta.sources): _sidecar(cfg, sh) for sh in shards}


def _make_old(data_dir: Path, stem: str) -> None:
    """Turn a shard into one written before the sidecar existed."""
    meta_path = shard_file(data_dir, stem, "meta")
    meta = json.loads(meta_path.read_text())
    (data_dir / meta.pop("documents")["name"]).unlink()
    meta_path.write_text(json.dumps(meta))


def _entry(cfg: Config, stem: str) -> ShardEntry:
    entry = inspect_one(
        cfg.data_dir, stem, spec_for(cfg, TokenizerManager.from_config(cfg.tokenizer))
    )
    assert entry is not None and entry.state == "new", entry and entry.reason
    return entry


# -- the digest and the streaming digester --------------------------------------------------------


def test_a_documents_digest_is_blake2b_128_of_its_ids_as_uint32_le() -> None:
    ids = np.array([256, 72, 105, 70000, 257], dtype=np.int64)
    raw = hashlib.blake2b(struct.pack("<5I", *ids.tolist()), digest_size=16).digest()
    assert digest_ids(ids) == (int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:], "big"))
    assert digest_ids(ids.astype(np.uint32)) == digest_ids(ids)  # the dtype does not matter
    assert digest_ids(ids[:-1]) != digest_ids(ids)


@pytest.mark.parametrize("digester_class", [DocumentDigester, BackgroundDigester])
def test_the_digester_gives_the_same_records_however_the_stream_is_cut(
    digester_class: type[DocumentDigester],
) -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 40, 200)
    stream = rng.integers(0, 1000, int(lengths.sum())).astype(np.uint32)
    ends = np.cumsum(lengths)
    sources = (np.arange(lengths.size) % 3).tolist()
    expected_starts = np.concatenate([[0], ends[:-1]])
    for cuts in ([], [1, 2, 3], sorted(rng.integers(0, stream.size, 25).tolist()), [5, 5, 9]):
        digester = digester_class()
        bounds = [0, *cuts, stream.size]
        for a, b in pairwise(bounds):
            inside = (ends > a) & (ends <= b) if a else (ends >= a) & (ends <= b)
            digester.add(
                stream[a:b], ends[inside] - a, [sources[i] for i in np.flatnonzero(inside)]
            )
        records = digester.finish(stream.size)
        assert records.size == lengths.size
        assert np.array_equal(records["start"], expected_starts)
        assert np.array_equal(records["source"], sources)
        assert not records["flags"].any()
        for rec, (a, b) in zip(records, _spans(records, stream.size)):
            assert (int(rec["hi"]), int(rec["lo"])) == digest_ids(stream[a:b])


def test_ids_after_the_last_end_are_one_more_document() -> None:
    digester = DocumentDigester()
    digester.add(np.arange(10, dtype=np.uint32), np.array([4]), [0])
    digester.add(np.arange(10, 13, dtype=np.uint32), np.zeros(0, np.int64), [])
    records = digester.finish(13)
    assert records["start"].tolist() == [0, 4] and records["source"].tolist() == [0, NO_SOURCE]
    tail = np.concatenate([np.arange(4, 10), np.arange(10, 13)])
    assert (int(records[1]["hi"]), int(records[1]["lo"])) == digest_ids(tail)
    with pytest.raises(ValueError):
        DocumentDigester().finish(1)  # a caller that lost ids is a bug, not a shard


def test_the_background_digester_raises_what_the_digester_raised() -> None:
    digester = BackgroundDigester()
    digester.add(np.arange(4, dtype=np.uint32), np.array([3, 2]), [0, 0])  # not ascending
    with pytest.raises(ValueError, match="ascending"):
        digester.finish(4)
    digester.close()


# -- what tokenize writes -------------------------------------------------------------------------


@pytest.mark.parametrize("boundary", ["file", "blank_line", "line"])
def test_every_shard_has_a_sidecar_matching_its_rows_and_sources(
    workspace: Path, boundary: str
) -> None:
    _raw_folder()
    cfg = _config(boundary=boundary)
    shards = _tokenized(cfg)
    assert any(len(s.meta.sources) > 1 for s in shards)  # packed: sources share a shard
    for shard in shards:
        records = _sidecar(cfg, shard)
        ids = shard.ids
        assert records.size == shard.meta.n_documents == shard.meta.documents.count > 0
        spans = _spans(records, shard.meta.n_tokens)
        assert spans[0][0] == 0 and spans[-1][1] == ids.size
        assert all(a < b for a, b in spans)  # every document has its EOS at least
        assert all(ids[b - 1] == 257 for _, b in spans)  # ... as its last id
        for rec, (a, b) in zip(records, spans):
            assert (int(rec["hi"]), int(rec["lo"])) == digest_ids(ids[a:b])
        texts: list[str] = []
        for k, source in enumerate(shard.meta.sources):
            start, end = source.byte_range
            want = documents(Path(source.path), cfg, start, end)
            got = [_text_of(ids[a:b]) for rec, (a, b) in zip(records, spans) if rec["source"] == k]
            assert got == want
            texts += got
        assert records["source"].tolist() == sorted(records["source"].tolist())
        assert len(texts) == records.size  # every document has a source of the shard


def test_where_chunks_segments_and_batches_are_cut_changes_no_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = []
    for name, knobs in [
        ("whole", {}),
        ("cut", {"chunk_bytes": 256, "segment_chars": 16, "batch_chars": 64}),
    ]:
        root = tmp_path / name
        root.mkdir()
        monkeypatch.chdir(root)
        _raw_folder()
        write_raw("long.txt", generated_text(80, seed=3).replace("\n\n", "\n"))  # long documents
        cfg = _config(boundary="blank_line")
        shards = _tokenized(cfg, **knobs)
        results.append({k: v.tobytes() for k, v in _by_sources(cfg, shards).items()})
    assert results[0] == results[1]
    assert len(results[0]) >= 3


@pytest.mark.parametrize("tok", [BYTE, BOTH, BOS_ONLY], ids=["eos", "bos+eos", "bos-only"])
def test_documents_split_from_the_stream_equal_the_sidecar(
    workspace: Path, tok: TokenizerConfig
) -> None:
    _raw_folder()
    cfg = _config(tok, boundary="blank_line")
    manager = TokenizerManager.from_config(tok)
    for shard in _tokenized(cfg):
        records = _sidecar(cfg, shard)
        derived = documents_from_stream(
            shard.ids,
            bos_id=manager.bos_id,
            eos_id=manager.eos_id,
            add_bos=tok.add_bos,
            add_eos=tok.add_eos,
        )
        assert derived is not None
        for field in ("hi", "lo", "start"):
            assert np.array_equal(derived[field], records[field])
        assert (derived["source"] == NO_SOURCE).all()


def test_without_bos_or_eos_the_stream_marks_no_documents(workspace: Path) -> None:
    _raw_folder()
    cfg = _config(NEITHER, boundary="line")
    (shard, *_) = _tokenized(cfg)
    records = _sidecar(cfg, shard)  # the writer still knows where documents end
    assert records.size == shard.meta.n_documents > 1
    for rec, (a, b) in zip(records, _spans(records, shard.meta.n_tokens)):
        assert (int(rec["hi"]), int(rec["lo"])) == digest_ids(shard.ids[a:b])
    kw = {"bos_id": 256, "eos_id": 257, "add_bos": False, "add_eos": False}
    assert documents_from_stream(shard.ids, **kw) is None
    assert np.array_equal(shard_documents(_entry(cfg, shard.stem), cfg.data_dir), records)
    _make_old(cfg.data_dir, shard.stem)
    assert shard_documents(_entry(cfg, shard.stem), cfg.data_dir) is None  # shard-level


# -- shards without a sidecar ---------------------------------------------------------------------


@pytest.mark.parametrize("formats", [["jsonl", "bin"], ["jsonl"]])
def test_an_old_shard_gets_its_documents_from_its_rows_once_then_from_the_cache(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, formats: list[str]
) -> None:
    _raw_folder()
    cfg = _config(boundary="line", formats=formats, seq_len=16)
    shard = max(_tokenized(cfg), key=lambda s: s.meta.n_rows)
    records = _sidecar(cfg, shard)
    assert shard.meta.n_rows > 7
    _make_old(cfg.data_dir, shard.stem)
    monkeypatch.setattr(documents_module, "_BLOCK_IDS", 3 * 16)  # documents across blocks
    entry = _entry(cfg, shard.stem)
    derived = shard_documents(entry, cfg.data_dir)
    assert derived is not None
    for field in ("hi", "lo", "start"):
        assert np.array_equal(derived[field], records[field])
    cache = cache_path(cfg.data_dir, shard.meta.shard_id)
    assert np.array_equal(read_documents(cache, n_tokens=shard.meta.n_tokens), derived)

    def no_reading(*_args: object) -> None:
        raise AssertionError("the cache was not used")

    with monkeypatch.context() as patch:
        patch.setattr(documents_module, "_split_rows", no_reading)
        assert np.array_equal(shard_documents(entry, cfg.data_dir), derived)
    cache.write_bytes(cache.read_bytes()[:-5])  # damaged: rebuilt
    assert np.array_equal(shard_documents(entry, cfg.data_dir), derived)
    assert np.array_equal(read_documents(cache), derived)


def test_a_newer_cache_entry_is_used_by_nobody_here_and_left_alone(workspace: Path) -> None:
    _raw_folder()
    cfg = _config(boundary="line")
    (shard, *_) = _tokenized(cfg)
    records = _sidecar(cfg, shard)
    _make_old(cfg.data_dir, shard.stem)
    cache = cache_path(cfg.data_dir, shard.meta.shard_id)
    cache.parent.mkdir(parents=True, exist_ok=True)
    newer = struct.pack("<8sIIQ8x", b"ALLLDOCS", 99, 32, 0)
    cache.write_bytes(newer)
    derived = shard_documents(_entry(cfg, shard.stem), cfg.data_dir)
    assert derived is not None and np.array_equal(derived["hi"], records["hi"])
    assert cache.read_bytes() == newer  # never overwritten as if it were damaged


# -- reading sidecars -----------------------------------------------------------------------------


def _written(tmp_path: Path, n: int = 4) -> tuple[Path, np.ndarray]:
    records = np.zeros(n, DOC_DTYPE)
    records["start"] = np.arange(n) * 10
    records["hi"] = np.arange(n, dtype=np.uint64) + np.uint64(2**63)
    records["source"] = 1
    path = tmp_path / "x.docs"
    sha, size = write_documents(path, records)
    assert size == path.stat().st_size == HEADER_SIZE + 32 * n
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    return path, records


def test_a_sidecar_reads_back_with_numpy_alone(tmp_path: Path) -> None:
    path, records = _written(tmp_path)
    assert np.array_equal(read_documents(path, n_tokens=40), records)
    assert np.array_equal(np.fromfile(path, DOC_DTYPE, offset=HEADER_SIZE), records)
    head = path.read_bytes()[:HEADER_SIZE]
    assert head[:8] == b"ALLLDOCS" and struct.unpack("<IIQ", head[8:24]) == (1, 32, 4)
    assert head[24:] == bytes(8)
    with pytest.raises(FileExistsError):  # never overwrites: the caller renames temporaries
        write_documents(path, records)


def test_a_newer_sidecar_is_a_format_version_error_not_damage(tmp_path: Path) -> None:
    path, _ = _written(tmp_path)
    data = bytearray(path.read_bytes())
    data[8:12] = struct.pack("<I", 7)
    path.write_bytes(bytes(data))
    with pytest.raises(FormatVersionError, match=r"x\.docs: document sidecar of format_version 7"):
        read_documents(path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "truncated"),
        ("short-header", "truncated"),
        ("grow", "trailing bytes"),
        ("magic", "wrong magic"),
        ("record-size", "records of 24 bytes"),
        ("order", "not ascending"),
        ("first", "first document starts at 10"),
        ("past-end", "past the shard's 25 ids"),
        ("count", "4 documents, meta says 5"),
        ("missing", "not found"),
    ],
)
def test_a_damaged_sidecar_is_a_one_line_data_error(
    tmp_path: Path, damage: str, message: str
) -> None:
    path, records = _written(tmp_path)
    data = bytearray(path.read_bytes())
    info, n_tokens = None, None
    if damage == "truncate":
        data = data[:-3]
    elif damage == "short-header":
        data = data[:20]
    elif damage == "grow":
        data += b"\0"
    elif damage == "magic":
        data[:8] = b"NOTDOCS!"
    elif damage == "record-size":
        data[12:16] = struct.pack("<I", 24)
    elif damage in ("order", "first"):
        records = records.copy()
        records["start"] = [0, 20, 10, 30] if damage == "order" else [10, 20, 30, 40]
        data = data[:HEADER_SIZE] + records.tobytes()
    elif damage == "past-end":
        n_tokens = 25
    elif damage == "count":
        info = DocumentsInfo(name="x.docs", sha256="", size=0, count=5, digest=DIGEST_ALGORITHM)
    path.write_bytes(bytes(data))
    if damage == "missing":
        path.unlink()
    with pytest.raises(DataError) as err:
        read_documents(path, info, n_tokens=n_tokens)
    line = err.value.one_line()
    assert str(path) in line and message in line and "\n" not in line


# -- the registry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["delete", "truncate", "alter"])
def test_a_shard_whose_sidecar_is_gone_or_changed_is_invalid(workspace: Path, damage: str) -> None:
    _raw_folder()
    cfg = _config()
    tok = TokenizerManager.from_config(cfg.tokenizer)
    (shard, *_) = _tokenized(cfg)
    path = cfg.data_dir / shard.meta.documents.name
    data = bytearray(path.read_bytes())
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(bytes(data[:-32]))
    else:
        data[HEADER_SIZE] ^= 0xFF  # one digest byte: same size, only verify sees it
        path.write_bytes(bytes(data))
    spec = spec_for(cfg, tok)
    quick = {e.name: e for e in scan_shards(cfg.data_dir, spec).shards}[shard.stem]
    checked = {e.name: e for e in scan_shards(cfg.data_dir, spec, verify=True).shards}
    entry = checked[shard.stem]
    assert entry.state == "invalid" and path.name in (entry.reason or "")
    want = {"delete": "missing", "truncate": "truncated", "alter": "digest mismatch"}[damage]
    assert want in (entry.reason or "")
    assert quick.state == ("new" if damage == "alter" else "invalid")
    others = [e for name, e in checked.items() if name != shard.stem]
    assert others and all(e.state == "new" for e in others)


def test_a_sidecar_is_no_data_file_of_the_shard(workspace: Path) -> None:
    _raw_folder()
    cfg = _config()
    tok = TokenizerManager.from_config(cfg.tokenizer)
    shards = _tokenized(cfg)
    stray = cfg.data_dir / "gone.cached.64.20240101_000000.docs"
    stray.write_bytes(b"a sidecar whose shard is gone")
    scan = scan_shards(cfg.data_dir, spec_for(cfg, tok), verify=True)
    assert [e.name for e in scan.shards] == shard_stems(cfg.data_dir)  # the stray is no shard
    assert all(e.state == "new" and not e.unlisted for e in scan.shards)
    assert all("docs" not in e.files for e in scan.shards)
    assert stem_taken(cfg.data_dir, "gone.cached.64.20240101_000000")
    meta = shards[0].meta.model_copy(update={"documents": None})
    assert "documents" in json.loads(shards[0].meta.model_dump_json())
    assert meta.documents is None  # optional: shards of before the sidecar validate


def test_meta_naming_another_sidecar_is_self_inconsistent(workspace: Path) -> None:
    _raw_folder()
    cfg = _config()
    tok = TokenizerManager.from_config(cfg.tokenizer)
    (shard, *_) = _tokenized(cfg)
    meta_path = shard_file(cfg.data_dir, shard.stem, "meta")
    meta = json.loads(meta_path.read_text())
    meta["documents"]["name"] = "../elsewhere.docs"
    meta_path.write_text(json.dumps(meta))
    entry = {e.name: e for e in scan_shards(cfg.data_dir, spec_for(cfg, tok)).shards}[shard.stem]
    assert entry.state == "invalid" and "documents.name" in (entry.reason or "")


# -- rebuilds -------------------------------------------------------------------------------------


def test_force_keeps_one_sidecar_per_shard_and_gives_old_shards_one(workspace: Path) -> None:
    _raw_folder()
    cfg = _config()
    shards = _tokenized(cfg)
    stems = shard_stems(cfg.data_dir)

    def sidecars() -> list[str]:
        return sorted(p.name.removesuffix(".docs") for p in cfg.data_dir.glob("*.docs"))

    summary = tokenize(cfg, force=True)  # a rebuild the live shards hold: discarded, .docs too
    assert sorted(summary.unchanged) == stems and not summary.shards
    assert sidecars() == stems == shard_stems(cfg.data_dir)
    old = shards[0].stem
    _make_old(cfg.data_dir, old)
    summary = tokenize(cfg, force=True)  # the old shard lacks a sidecar: its rebuild replaces it
    assert summary.replaced == [old] and len(summary.shards) == 1
    assert old not in shard_stems(cfg.data_dir)
    gone = {f"{old}{suffix}" for suffix in (".jsonl", ".bin", ".docs", ".meta.json")}
    assert not gone & set(os.listdir(cfg.data_dir))
    assert sidecars() == shard_stems(cfg.data_dir)
    new = check_all(cfg.data_dir, cfg, TokenizerManager.from_config(cfg.tokenizer))
    assert {s.meta.shard_id for s in new} == {s.meta.shard_id for s in shards}
    assert all(s.meta.documents is not None for s in new)
    assert not [p for p in cfg.data_dir.iterdir() if p.name.endswith(".tmp")]
    assert not os.listdir(cfg.data_dir / ".allllm" / "inflight")
