"""Units of work: read one after the other, a source's units give exactly its documents."""

from __future__ import annotations

import gzip
import itertools
import json
import random
from pathlib import Path

import pytest

from allllm.data.raw import iter_documents, resolve_sources
from allllm.data.raw.units import iter_unit, work_units


def _docs_of_units(source, boundary: str, target: int) -> tuple[list[str], list]:
    units = work_units(source, boundary=boundary, target_bytes=target)
    docs: list[str] = []
    for unit in units:
        parts: list[str] = []
        for batch in iter_unit(unit, boundary=boundary):
            nxt = [*batch.doc_starts[1:], not batch.open]
            for text, first, last in zip(batch.texts, batch.doc_starts, nxt):
                if first:
                    parts = []
                parts.append(text)
                if last:
                    docs.append("".join(parts))
    return docs, units


def _tricky_text(seed: int) -> str:
    rng = random.Random(seed)
    words = ["alpha", "béta", "😀", "x" * 40, " ", "\t", "word"]
    out = []
    for _ in range(300):
        r = rng.random()
        if r < 0.15:
            out.append("\n" + rng.choice(["", "  ", "\t", " \u3000 "]) + "\n" * rng.randint(1, 3))
        elif r < 0.2:
            out.append("\r\n")
        else:
            out.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) + "\n")
    return "\ufeff" + "".join(out)


@pytest.mark.parametrize("boundary", ["line", "blank_line", "file"])
@pytest.mark.parametrize("target", [1, 37, 500, 1 << 20])
def test_text_units_tile_the_file_and_give_the_same_documents(
    tmp_path: Path, boundary: str, target: int
) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(_tricky_text(target).encode())
    (source,) = resolve_sources([str(path)])
    docs, units = _docs_of_units(source, boundary, target)
    assert docs == list(iter_documents(source, boundary=boundary))
    assert units[0].start == 0 and units[-1].end == source.size
    assert all(a.end == b.start for a, b in itertools.pairwise(units))
    if boundary == "file" or target == 1 << 20:
        assert len(units) == 1
    else:
        assert len(units) > 3


def test_json_lines_cut_at_line_ends_compressed_is_one_unit(tmp_path: Path) -> None:
    recs = [{"text": f"record {k} " + "é" * (k % 13)} for k in range(200)]
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode()
    (tmp_path / "r.jsonl").write_bytes(data)
    (tmp_path / "r.json.gz").write_bytes(gzip.compress(data))
    plain, packed = resolve_sources([str(tmp_path / "r.jsonl"), str(tmp_path / "r.json.gz")])
    docs, units = _docs_of_units(plain, "file", 300)
    assert docs == [r["text"] for r in recs] and len(units) > 10
    docs, units = _docs_of_units(packed, "line", 300)
    assert docs == [r["text"] for r in recs] and [u.kind for u in units] == ["whole"]


def test_parquet_row_groups_are_units(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from allllm.data.raw.columnar import unit_offsets

    values = [f"doc {k}" for k in range(25)]
    pq.write_table(pa.table({"text": values}), tmp_path / "p.parquet", row_group_size=10)
    (source,) = resolve_sources([str(tmp_path / "p.parquet")])
    offsets = unit_offsets(source)
    assert len(offsets) == 3 and offsets[0] == 0 and offsets == sorted(set(offsets))
    docs, units = _docs_of_units(source, "file", 1)
    assert docs == values
    bounds = [*offsets, source.size]
    assert [(u.kind, u.start, u.end) for u in units] == [("bytes", *p) for p in pairs(bounds)]
    # groups of consecutive row groups, never more bytes than the target unless one is bigger
    (whole,) = work_units(source, boundary="file", target_bytes=source.size)
    assert (whole.start, whole.end) == (0, source.size)
    two = work_units(source, boundary="file", target_bytes=bounds[2])
    assert [(u.start, u.end) for u in two] == [(0, bounds[2]), (bounds[2], source.size)]


def pairs(xs: list[int]) -> list[tuple[int, int]]:
    return list(itertools.pairwise(xs))


@pytest.mark.parametrize("boundary", ["line", "blank_line"])
@pytest.mark.parametrize("target", [1, 37, 500])
def test_units_hold_at_most_the_target_and_a_range_has_the_files_units(
    tmp_path: Path, boundary: str, target: int
) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(_tricky_text(target + 1).encode())
    (source,) = resolve_sources([str(path)])
    units = work_units(source, boundary=boundary, target_bytes=target)
    docs = list(iter_documents(source, boundary=boundary))
    for u in units:  # over the target only where the unit is a single document
        inside = list(iter_documents(source, boundary=boundary, start=u.start, end=u.end))
        assert u.end - u.start <= target or len(inside) <= 1, (u, inside)
    cuts = [u.start for u in units[1:]]
    lo, hi = cuts[len(cuts) // 3] - 1, cuts[2 * len(cuts) // 3]
    part = work_units(source, boundary=boundary, target_bytes=target, start=lo, end=hi)
    assert [u.start for u in part[1:]] == [c for c in cuts if lo < c < hi]
    assert part[0].start == lo and part[-1].end == hi
    assert docs == [
        d
        for u in units
        for d in iter_documents(source, boundary=boundary, start=u.start, end=u.end)
    ]


@pytest.mark.parametrize("kind", ["parquet", "stream", "file"])
def test_columnar_byte_ranges_are_units_read_by_their_offsets(tmp_path: Path, kind: str) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pytest.importorskip("pyarrow.ipc")
    from allllm.data.raw import iter_batches
    from allllm.data.raw.columnar import unit_offsets

    values = [f"record {k} " + "é" * (k % 17) for k in range(40)]
    t = pa.table({"text": values})
    path = tmp_path / ("c.parquet" if kind == "parquet" else "c.arrow")
    if kind == "parquet":
        pq.write_table(t, path, row_group_size=7)
    else:
        with pa.OSFile(str(path), "wb") as sink:
            new = pa.ipc.new_file if kind == "file" else pa.ipc.new_stream
            with new(sink, t.schema) as writer:
                for rb in t.to_batches(max_chunksize=7):
                    writer.write_batch(rb)
    (source,) = resolve_sources([str(path)])
    offsets = unit_offsets(source)
    assert len(offsets) == 6 and offsets[0] == 0 and offsets == sorted(set(offsets))
    assert offsets[-1] < source.size
    docs: list[str] = []
    for a, b in pairs([*offsets, source.size]):
        batches = list(iter_batches(source, boundary="file", start=a, end=b))
        got = [x for batch in batches for x in batch.texts]
        assert got == values[len(docs) : len(docs) + 7]
        docs += got
        done = [batch.read_bytes for batch in batches]  # byte offsets, for progress
        assert done == sorted(done) and a <= done[0] and done[-1] == b
    assert docs == values
    two = list(iter_documents(source, boundary="file", start=offsets[2], end=offsets[4]))
    assert two == values[14:28]
    with pytest.raises(ValueError, match="offsets"):
        list(iter_batches(source, boundary="file", start=offsets[1] + 1, end=None))
    with pytest.raises(ValueError, match="not both"):
        list(iter_batches(source, boundary="file", start=offsets[1], units=(0, 1)))
