"""``data.shard_bytes``: shard jobs of at most that much input, cut at document and unit ends.

Small files and a ``shard_bytes`` of a few KB, the byte tokenizer. Until ``tokenize`` passes
``data.shard_bytes`` to the plan itself, ``_tokenize`` makes the config's value the plan's
default (the same value either way).
"""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from allllm.config import Config, TokenizerConfig
from allllm.data.raw import iter_documents, resolve_sources, source_identity, source_sha256
from allllm.data.tokenize.plan import (
    Settings,
    _Entry,
    _History,
    existing_shards,
    plan_tokenize,
)
from allllm.data.tokenize.run import tokenize
from allllm.data.tokenize.summary import TokenizeSummary
from allllm.tokenizer.manager import TokenizerManager
from tokenize_helpers import (
    CheckedShard,
    check_all,
    check_shard,
    documents,
    make_config,
    part_ids,
    real_text,
    states,
    whole_document_ids,
    write_raw,
)

KB = 1024


@pytest.fixture()
def tok() -> TokenizerManager:
    return TokenizerManager.from_config(TokenizerConfig(backend="byte"))


def _tokenize(cfg: Config) -> TokenizeSummary:
    return tokenize(cfg)


def _lines(n_bytes: int, start: int = 0) -> str:
    return real_text(n_bytes, start=start)


def _of(shards: list[CheckedShard], path: str) -> list[CheckedShard]:
    """The shards holding ``path``, in byte order."""
    mine = [s for s in shards if any(r.path == path for r in s.meta.sources)]
    return sorted(mine, key=lambda s: s.meta.sources[0].byte_range)


def _ranges(shards: list[CheckedShard]) -> list[tuple[int, int]]:
    return [tuple(r.byte_range) for s in shards for r in s.meta.sources]


def _tiles(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    ranges = sorted(ranges)
    adjacent = all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    return adjacent and ranges[0][0] == start and ranges[-1][1] == end


def test_a_big_text_source_is_cut_at_line_ends_into_shards_of_at_most_shard_bytes(
    workspace: Path, tok: TokenizerManager
) -> None:
    long_line = "y" * (6 * KB) + "\n"  # one document over shard_bytes: cut inside it
    path = write_raw("a.txt", _lines(10_000, 1) + long_line + _lines(10_000, 2))
    data = path.read_bytes()
    cfg = make_config(document_boundary="line", shard_bytes=4 * KB)
    summary = _tokenize(cfg)
    shards = _of(check_all(cfg.data_dir, cfg, tok), "data/raw/a.txt")
    assert len(summary.shards) == len(shards) >= 6
    ranges = _ranges(shards)
    assert _tiles(ranges, 0, len(data))
    inside = [tuple(s.meta.sources[0].inside_document) for s in shards]
    # cut at line ends, but once inside the long line (the byte tokenizer cuts anywhere)
    assert [data[end - 1 : end] == b"\n" for _, end in ranges] == [not i[1] for i in inside]
    assert sum(i[1] for i in inside) == 1 and all(b - a <= cfg.data.shard_bytes for a, b in ranges)
    for shard, (a, b), cut in zip(shards, ranges, inside):
        docs = documents(path, cfg, a, b)
        assert np.array_equal(shard.ids, part_ids(docs, tok, cfg, cut))
        assert shard.meta.n_documents == len(docs)
    # the same token stream, document for document, as one whole-file shard
    big = make_config(document_boundary="line", dir="whole", shard_bytes=1 << 20)
    _tokenize(big)
    (whole,) = check_all(big.data_dir, big, tok)
    assert _ranges([whole]) == [(0, len(data))]
    assert np.array_equal(np.concatenate([s.ids for s in shards]), whole.ids)
    # a rerun is up to date, with any shard_bytes
    again = _tokenize(cfg)
    assert again.shards == [] and again.up_to_date == ["data/raw/a.txt"]
    assert _tokenize(make_config(document_boundary="line", shard_bytes=1 << 20)).shards == []


def test_appended_lines_get_shards_of_only_the_appended_bytes(
    workspace: Path, tok: TokenizerManager
) -> None:
    path = write_raw("a.txt", _lines(12_000, 3))
    old_size = path.stat().st_size
    cfg = make_config(document_boundary="line", shard_bytes=4 * KB)
    first = {s.stem for s in _tokenize(cfg).shards}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(_lines(9_000, 4))
    summary = _tokenize(cfg)
    assert len(summary.shards) >= 2
    assert all(s.why == ["appended"] and s.supersedes == [] for s in summary.shards)
    new = [check_shard(cfg.data_dir, s.stem, cfg, tok) for s in summary.shards]
    assert not first & {s.stem for s in new}
    assert _tiles(_ranges(new), old_size, path.stat().st_size)
    assert all(b - a <= 4 * KB for a, b in _ranges(new))
    assert set(states(cfg, tok).values()) == {"new"}  # the old shards stay live
    assert _tokenize(cfg).shards == []


def test_changing_a_multi_shard_source_supersedes_all_its_shards_and_nothing_else(
    workspace: Path, tok: TokenizerManager
) -> None:
    a = write_raw("a.txt", _lines(12_000, 5))
    write_raw("b.txt", _lines(12_000, 6))
    cfg = make_config(document_boundary="line", shard_bytes=4 * KB)
    _tokenize(cfg)
    before = check_all(cfg.data_dir, cfg, tok)
    old_a = {s.meta.shard_id for s in _of(before, "data/raw/a.txt")}
    old_b = {s.stem for s in _of(before, "data/raw/b.txt")}
    assert len(old_a) >= 3 and len(old_b) >= 3
    text = a.read_text(encoding="utf-8")
    a.write_text("A changed first line.\n" + text[text.index("\n") + 1 :], encoding="utf-8")
    summary = _tokenize(cfg)
    assert summary.shards and all(s.sources == ["data/raw/a.txt"] for s in summary.shards)
    # the job of the first part names all of them; later parts name none, as one of them
    # may have an old shard's id (unchanged text) and must not be superseded by the first
    first, *rest = sorted(summary.shards, key=lambda s: s.stem)
    assert set(first.supersedes) == old_a and all(s.supersedes == [] for s in rest)
    now = states(cfg, tok)
    new_a = {s.stem for s in summary.shards}
    assert {now[s] for s in new_a} == {"new"} and {now[s] for s in old_b} == {"new"}
    old_stems = {s.stem for s in before if s.meta.shard_id in old_a}
    assert {now[s] for s in old_stems} <= {"superseded", "duplicate"}  # of a new twin
    assert "superseded" in {now[s] for s in old_stems}
    fresh = [check_shard(cfg.data_dir, stem, cfg, tok) for stem in sorted(new_a)]
    assert _tiles(_ranges(fresh), 0, a.stat().st_size)
    assert _tokenize(cfg).shards == []


def test_an_existing_layout_stays_up_to_date_when_shard_bytes_changes(
    workspace: Path, tok: TokenizerManager
) -> None:
    write_raw("a.txt", _lines(12_000, 7))
    big = make_config(document_boundary="line", shard_bytes=1 << 20)
    assert len(_tokenize(big).shards) == 1
    small = make_config(document_boundary="line", shard_bytes=2 * KB)
    summary = _tokenize(small)
    assert summary.shards == [] and summary.up_to_date == ["data/raw/a.txt"]
    write_raw("b.txt", _lines(12_000, 8))  # made with the small limit: several shards
    assert len(_tokenize(small).shards) >= 5
    again = _tokenize(big)
    assert again.shards == [] and again.up_to_date == ["data/raw/a.txt", "data/raw/b.txt"]


def test_history_of_adjacent_byte_ranges_is_complete() -> None:
    def entry(stem: str, a: int, b: int, size: int = 300, sha: str = "s") -> _Entry:
        return _Entry(stem, size, a, b, sha)

    parts = [entry("x", 200, 300), entry("y", 0, 100), entry("z", 100, 200)]
    assert _History(parts).latest() == (300, "s")
    assert _History([parts[0], parts[1]]).latest() is None  # a gap: a shard was deleted
    grown = [*parts, entry("w", 300, 350, 350, "t"), entry("v", 350, 400, 400, "u")]
    assert _History(grown).latest() == (400, "u")
    assert _History([*parts, entry("v", 350, 400, 400, "u")]).latest() is None  # no 350 state
    # a later part of a changed source beside the old whole shard (a run stopped before the
    # first part's job): not a complete state, though the ranges together reach the end
    assert _History([entry("old", 0, 300), entry("p2", 150, 320, 320, "new")]).latest() is None
    assert _History([entry("p1", 0, 150, 320, "n"), entry("p2", 150, 320, 320, "n")]).latest()


def test_small_files_pack_into_shards_of_at_most_shard_bytes(
    workspace: Path, tok: TokenizerManager
) -> None:
    for k in range(10):
        write_raw(f"s{k:02d}.txt", _lines(1_500, 10 + k))
    cfg = make_config(document_boundary="line", shard_bytes=4 * KB, pack_below_bytes=10_000)
    summary = _tokenize(cfg)
    shards = check_all(cfg.data_dir, cfg, tok)
    assert len(shards) == len(summary.shards) >= 4
    assert all(sum(b - a for a, b in _ranges([s])) <= 4 * KB for s in shards)
    held = sorted(r.path for s in shards for r in s.meta.sources)
    assert held == [f"data/raw/s{k:02d}.txt" for k in range(10)]  # each file once, whole
    assert all(r.byte_range == (0, r.size) for s in shards for r in s.meta.sources)


def test_a_compressed_source_stays_one_shard(workspace: Path, tok: TokenizerManager) -> None:
    records = [{"text": line} for line in _lines(30_000, 20).splitlines() if line.strip()]
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    path = write_raw("r.jsonl.gz", gzip.compress(body))
    assert path.stat().st_size > 4 * KB
    cfg = make_config(shard_bytes=KB)
    assert len(_tokenize(cfg).shards) == 1
    (checked,) = check_all(cfg.data_dir, cfg, tok)
    assert _ranges([checked]) == [(0, path.stat().st_size)]
    assert checked.meta.n_documents == len(records)


def _parquet(path: Path, values: list[str], rows: int) -> Path:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": values}), path, row_group_size=rows)
    return path


def _settings(tok: TokenizerManager, cfg: Config) -> Settings:
    d, t = cfg.data, cfg.tokenizer
    return Settings(
        tok.fingerprint, d.seq_len, d.document_boundary, t.add_bos, t.add_eos, d.text_field
    )


def test_a_parquet_source_is_cut_at_row_groups(workspace: Path, tok: TokenizerManager) -> None:
    from allllm.data.raw.columnar import unit_offsets

    values = [real_text(700, start=k) for k in range(24)]
    path = _parquet(Path("data/raw/p.parquet"), values, rows=4)
    (source,) = resolve_sources([str(path)])
    offsets = unit_offsets(source)
    bounds = [*offsets, source.size]
    assert len(offsets) == 6
    cfg = make_config()

    def jobs(limit: int) -> list[tuple[int, int]]:
        plan = plan_tokenize(
            [source], [], _settings(tok, cfg), identity=source_identity, sha256=source_sha256,
            pack_below_bytes=0, shard_bytes=limit,
        )  # fmt: skip
        return [(i.start, i.end) for job in plan.jobs for i in job.items]

    ranges = jobs(1)  # every row group over the limit: one job each, never cut
    assert ranges == list(itertools.pairwise(bounds))
    two = jobs(bounds[2])  # the first two row groups fit exactly
    assert two[0] == (0, bounds[2]) and _tiles(two, 0, source.size)
    assert {a for a, _ in two} <= set(offsets)
    assert all(b - a <= bounds[2] or (a, b) in ranges for a, b in two)  # or one row group
    read = [d for a, b in ranges for d in iter_documents(source, boundary="file", start=a, end=b)]
    assert read == values
    with pytest.raises(ValueError, match="offsets"):
        list(iter_documents(source, boundary="file", start=1, end=None))


def test_parquet_shards_split_at_row_groups_end_to_end(
    workspace: Path, tok: TokenizerManager
) -> None:
    values = [real_text(700, start=k) for k in range(24)]
    path = _parquet(Path("data/raw/p.parquet"), values, rows=4)
    (source,) = resolve_sources([str(path)])
    cfg = make_config(shard_bytes=(source.size // 3))
    assert len(_tokenize(cfg).shards) >= 3
    shards = _of(check_all(cfg.data_dir, cfg, tok), str(path))
    assert _tiles(_ranges(shards), 0, source.size)
    ids = np.concatenate([s.ids for s in shards])
    assert np.array_equal(ids, whole_document_ids(values, tok, cfg))
    assert _tokenize(cfg).shards == []


def test_plan_is_the_same_whatever_the_order_of_hashing(
    workspace: Path, tok: TokenizerManager
) -> None:
    write_raw("a.txt", _lines(12_000, 30))
    write_raw("b.txt", _lines(3_000, 31))
    cfg = make_config(document_boundary="line", shard_bytes=4 * KB)
    _tokenize(cfg)
    with open("data/raw/a.txt", "a", encoding="utf-8") as fh:
        fh.write(_lines(9_000, 32))
    sources = resolve_sources(["data/raw"])

    def plan(reverse: bool) -> list[list[tuple[str, int, int, str | None, str]]]:
        calls: list[str] = []

        def sha(source, n):  # type: ignore[no-untyped-def]
            calls.append(str(source.path))
            return source_sha256(source, n)

        shards = existing_shards(cfg.data_dir)
        p = plan_tokenize(
            sources, shards[::-1] if reverse else shards, _settings(tok, cfg),
            identity=source_identity, sha256=sha, pack_below_bytes=0, shard_bytes=4 * KB,
        )  # fmt: skip
        return [
            [(str(i.source.path), i.start, i.end, i.sha256, i.why) for i in j.items] for j in p.jobs
        ]

    first = plan(False)
    assert first == plan(True) and len(first) >= 2
    assert all(items[0][4] == "appended" for items in first)


def test_missing_parts_of_a_source_are_all_that_is_redone(
    workspace: Path, tok: TokenizerManager
) -> None:
    """A run that stopped midway (here: two parts' shards deleted) leaves the source's
    other parts live; the next run tokenizes only the missing byte ranges, cut as before,
    so the shards (ids and ranges) are those of an uninterrupted run."""
    write_raw("big.txt", _lines(24 * KB, start=2))
    cfg = make_config(document_boundary="line", shard_bytes=4 * KB)
    whole = _tokenize(cfg)
    assert len(whole.shards) >= 5
    gone = [whole.shards[1], whole.shards[3]]
    for shard in gone:
        for name in [*shard.files, f"{shard.stem}.meta.json"]:
            (cfg.data_dir / name).unlink(missing_ok=True)
    for extra in cfg.data_dir.glob(f"{gone[0].stem}*"):
        extra.unlink()
    for extra in cfg.data_dir.glob(f"{gone[1].stem}*"):
        extra.unlink()
    again = _tokenize(cfg)
    assert sorted(s.shard_id for s in again.shards) == sorted(s.shard_id for s in gone)
    assert all(s.why == ["resumed"] for s in again.shards) and not again.superseded
    assert set(states(cfg, tok).values()) == {"new"}
    assert not _tokenize(cfg).shards  # complete again: up to date
