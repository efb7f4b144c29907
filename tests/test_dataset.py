"""Reading rows: .bin memmaps, indexed .jsonl, legacy tensors, batches, validation rows (docs/design.md)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from allllm.data import dataset as dataset_mod
from allllm.data import jsonl_rows
from allllm.data.dataset import ShardDataset, ShardSource, build_line_index
from allllm.data.valsplit import row_uniforms, split_rows, split_sizes, validation_mask
from allllm.errors import DataError
from shard_factory import random_rows, tokenizer_info, write_legacy_bin, write_shard

L = 16
PAD = 258


def make(data: Path, rows: list[list[int]], source: str = "s", **kw) -> dict[str, ShardSource]:
    """The shard as a source per format."""
    kw.setdefault("tokenizer", tokenizer_info(vocab_size=264, pad_id=PAD))
    shard = write_shard(data, rows, seq_len=L, source=source, **kw)
    return {
        role: ShardSource.from_meta(data, shard.stem, shard.meta, prefer=role)
        for role in shard.meta.files
    }


def padded(rows: list[list[int]], pad: int = PAD) -> np.ndarray:
    out = np.full((len(rows), L), pad, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_bin_and_jsonl_give_the_same_int64_rows_and_lengths(data: Path) -> None:
    rows = random_rows(5, L, last_row_len=7, seed=3)
    src = make(data, rows)
    for role in ("bin", "jsonl"):
        ds = ShardDataset([src[role]], vocab_limit=264)
        ids, lengths = ds.fetch([4, 0, 2])
        assert ids.dtype.is_floating_point is False and str(ids.dtype) == "torch.int64"
        assert ids.shape == (3, L) and lengths.tolist() == [7, L, L]
        assert np.array_equal(ids.numpy(), padded(rows)[[4, 0, 2]]), role
        row, n = ds[4]
        assert n == 7 and row[7:].tolist() == [PAD] * (L - 7)


def test_uint16_ids_above_32767_do_not_wrap(data: Path) -> None:
    big = [[65535, 40000, 32768, 1] * (L // 4)]
    src = make(data, big, tokenizer=tokenizer_info(vocab_size=65536, eos_id=0))
    assert src["bin"].dtype == "uint16"
    ids, _ = ShardDataset([src["bin"]], vocab_limit=65536).fetch([0])
    assert ids[0, :4].tolist() == [65535, 40000, 32768, 1]


def test_batch_across_shards_keeps_the_requested_order(data: Path) -> None:
    a = random_rows(4, L, seed=1)
    b = random_rows(3, L, last_row_len=5, seed=2)
    ds = ShardDataset([make(data, a, "a")["bin"], make(data, b, "b")["jsonl"]], vocab_limit=264)
    order = [6, 0, 4, 3, 5, 1]
    ids, lengths = ds.fetch_numpy(order)
    expected = np.concatenate([padded(a), padded(b)])[order]
    assert np.array_equal(ids, expected) and lengths.tolist() == [5, L, L, L, L, L]
    with pytest.raises(IndexError):
        ds.fetch_numpy([7])


def test_line_index_in_small_chunks_matches_the_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    lines = [json.dumps(list(range(i % 7 + 1))) for i in range(50)]
    path.write_text("\n".join(lines))  # no newline at the end
    offsets = build_line_index(path, chunk=13)
    text = path.read_bytes()
    assert [text[offsets[i] : offsets[i + 1]].strip().decode() for i in range(50)] == lines
    assert offsets[-1] == len(text)


def test_jsonl_random_access_reads_only_the_row(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = random_rows(400, L, last_row_len=3, seed=4)  # ~25 KB
    src = make(data, rows, formats=("jsonl",))["jsonl"]
    monkeypatch.setattr(jsonl_rows, "INDEX_CHUNK", 1000)
    ShardDataset([src], vocab_limit=264).fetch([0])  # builds and caches the index
    cached = list((data / ".allllm" / "cache").glob("*.lines.npy"))
    assert len(cached) == 1 and cached[0].name.startswith(src.shard_id)

    reads: list[tuple[int, int]] = []

    class Recorder:
        def __init__(self, fh) -> None:
            self.fh, self.pos = fh, 0

        def seek(self, pos: int) -> None:
            self.pos = pos
            self.fh.seek(pos)

        def read(self, n: int) -> bytes:
            reads.append((self.pos, n))
            return self.fh.read(n)

        def close(self) -> None:
            self.fh.close()

    def no_rebuild(path, chunk=None):
        raise AssertionError("the cached index must be used")

    monkeypatch.setattr(dataset_mod, "_open_raw", lambda p: Recorder(p.open("rb", buffering=0)))
    monkeypatch.setattr(dataset_mod, "build_line_index", no_rebuild)
    ids, lengths = ShardDataset([src], vocab_limit=264).fetch([399])
    last_line = src.path.read_bytes().splitlines(keepends=True)[-1]
    assert reads == [(src.path.stat().st_size - len(last_line), len(last_line))]
    assert ids[0, :3].tolist() == rows[-1] and lengths.tolist() == [3]


def test_stale_index_is_rebuilt(data: Path) -> None:
    rows = random_rows(3, L, seed=5)
    src = make(data, rows, formats=("jsonl",))["jsonl"]
    ShardDataset([src], vocab_limit=264).fetch([0])
    changed = rows[1][:]
    changed[0] = (changed[0] + 1) % 200
    text = "".join(json.dumps(r) + "\n" for r in (rows[0], changed, rows[2]))  # new offsets
    src.path.write_text(text)
    os.utime(src.path, ns=(1, 1))
    ids, _ = ShardDataset([src], vocab_limit=264).fetch([1, 2])
    assert ids[0].tolist() == changed and ids[1].tolist() == rows[2]
    assert len(list((data / ".allllm" / "cache").glob("*.lines.npy"))) == 1  # old entry removed


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[1, 2, 999]", "id 999 outside 0..263"),
        ('{"ids": [1]}', "expected a non-empty JSON list"),
        ("[1, 2.5]", "the row must hold integers only"),
        ("[1, true]", "the row must hold integers only"),
        ("[1, 2", "not valid JSON"),
        (json.dumps(list(range(L + 1))), "17 ids, more than seq_len 16"),
        ("[1, 2]", "2 ids, meta says 16"),
    ],
)
def test_bad_jsonl_row_names_file_and_line(data: Path, line: str, message: str) -> None:
    rows = random_rows(3, L, seed=6)
    src = make(data, rows, formats=("jsonl",))["jsonl"]
    lines = src.path.read_text().splitlines()
    lines[1] = line
    src.path.write_text("\n".join(lines) + "\n")
    ds = ShardDataset([src], vocab_limit=264)
    ds.fetch([0])
    with pytest.raises(DataError) as err:
        ds.fetch([1])
    assert f"{src.path}:2: " in str(err.value) and message in str(err.value)


def test_jsonl_with_a_line_count_other_than_meta_is_an_error(data: Path) -> None:
    src = make(data, random_rows(3, L), formats=("jsonl",))["jsonl"]
    src.path.write_text(src.path.read_text() + "[1]\n")
    with pytest.raises(DataError, match="has 4 lines, meta says 3 rows"):
        ShardDataset([src], vocab_limit=264).fetch([0])


def test_legacy_stream_rows_and_short_final_row(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    stream = torch.arange(2 * L + 5, dtype=torch.int32)
    path = write_legacy_bin(tmp_path / "seed.cached.16.20240101_000000.bin", stream)
    src = ShardSource("seed", path, "legacy", L, 3, 5, None, pad_id=0, shard_id="c" * 64)
    ids, lengths = ShardDataset([src], vocab_limit=264).fetch_numpy([2, 0])
    assert lengths.tolist() == [5, L]
    assert ids[0].tolist() == [*range(32, 37), *[0] * (L - 5)] and ids[1].tolist() == list(range(L))


def test_dataset_pickles_for_loader_workers(data: Path) -> None:
    rows = random_rows(3, L, seed=7)
    src = make(data, rows)
    ds = ShardDataset([src["bin"], src["jsonl"]], vocab_limit=264)
    ds.fetch([0, 5])
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone.fetch_numpy([1, 4])[0], ds.fetch_numpy([1, 4])[0])


def test_open_files_are_bounded(data: Path) -> None:
    srcs = [make(data, random_rows(1, L, seed=i), f"s{i}")["bin"] for i in range(5)]
    ds = ShardDataset(srcs, vocab_limit=264, max_open=2)
    ds.fetch(range(5))
    assert len(ds._readers) == 2


# -- validation rows (docs/design.md: validation rows) -------------------------------------------------------------


def _reference_u(seed: int, shard_id: str, r: int) -> float:
    """The documented formula in plain Python integers."""
    m = 2**64 - 1
    key = int.from_bytes(hashlib.sha256(f"{seed}:{shard_id}".encode()).digest()[:8], "little")
    x = (key + r * 0x9E3779B97F4A7C15) & m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    x ^= x >> 31
    return (x >> 11) / 2**53


def test_validation_hash_is_fixed_forever() -> None:
    sid = "a" * 64
    got = row_uniforms(1337, sid, np.array([0, 1, 2]))
    assert got.tolist() == [0.6859682536937223, 0.7693298828623695, 0.1749484672262962]
    for r in (0, 5, 12345, 2**40 + 3):
        assert row_uniforms(1337, sid, np.array([r]))[0] == _reference_u(1337, sid, r)
    assert row_uniforms(7, "b" * 64, 1000).tolist() == [
        _reference_u(7, "b" * 64, r) for r in range(1000)
    ]


def test_split_is_a_partition_near_the_fraction() -> None:
    train, val = split_rows(1, "d" * 64, 20_000, 0.05)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(20_000))
    assert 0.04 < val.size / 20_000 < 0.06
    assert split_rows(1, "d" * 64, 100, 0.0)[1].size == 0
    assert split_sizes(1, "d" * 64, 0, L, 0, 0.5) == (0, 0, 0, 0)


def test_every_non_empty_shard_keeps_a_training_row() -> None:
    # a 1-row shard whose only row hashes below the fraction: it is trained on anyway
    sid = next(s for s in (f"{i:064x}" for i in range(100)) if row_uniforms(3, s, 1)[0] < 0.5)
    assert validation_mask(3, sid, 1, 0.5).tolist() == [False]
    assert split_sizes(3, sid, 1, L, 5, 0.5) == (1, 5, 0, 0)


def test_dataset_training_and_validation_rows(data: Path) -> None:
    a = make(data, random_rows(50, L, seed=1), "a")["bin"]
    b = make(data, random_rows(30, L, last_row_len=4, seed=2), "b")["bin"]
    ds = ShardDataset([a, b], vocab_limit=264)
    train, val = ds.training_rows(9, 0.2), ds.validation_rows(9, 0.2)
    assert train.dtype == np.int32
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(80))
    assert np.array_equal(val[val >= 50] - 50, split_rows(9, b.shard_id, 30, 0.2)[1])
