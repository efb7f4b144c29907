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
    values = [f"doc {k}" for k in range(25)]
    pq.write_table(pa.table({"text": values}), tmp_path / "p.parquet", row_group_size=10)
    (source,) = resolve_sources([str(tmp_path / "p.parquet")])
    docs, units = _docs_of_units(source, "file", 1)
    assert docs == values
    assert [(u.kind, u.start, u.end) for u in units] == [("row_groups", i, i + 1) for i in range(3)]
