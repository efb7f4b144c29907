"""A document bigger than ``data.shard_bytes`` is cut between shards at the encoder's safe
points (issue 18): the shards' ids, read in order, are exactly those of the document
tokenized whole, and each part's record and meta say it goes on.

Small files and a ``shard_bytes`` of a few KB; the fixture tokenizers of every backend that
has a cut rule (byte: anywhere; hf / tiktoken: between a line end and a letter), and
SentencePiece, which has none (the document stays one shard).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from allllm.config import Config, TokenizerConfig
from allllm.data.document_digest import DOC_CONTINUED, DOC_CONTINUES
from allllm.data.documents import read_documents
from allllm.data.raw import resolve_sources, work_units
from allllm.data.tokenize.packing import ShardJob, WorkItem
from allllm.data.tokenize.plan import TokenizePlan
from allllm.data.tokenize.run import tokenize
from allllm.data.tokenize.shared_plan import _plan_from_json, _plan_to_json
from allllm.tokenizer.manager import TokenizerManager
from tokenize_helpers import CheckedShard, check_all, documents, make_config, part_ids, real_text

KB = 1024


def _paragraph(n_chars: int, start: int, crlf: bool = False) -> str:
    """Real prose with no blank line: one document in every boundary mode but ``line``,
    with some characters of 2-4 UTF-8 bytes, so cuts must fall on character starts.
    (The newline-letter rule never cuts after "\r\n": only the byte tokenizer's cuts it.)"""
    lines = [ln for ln in real_text(n_chars, start=start).splitlines() if ln.strip()]
    lines = [f"{ln} café — 東京 🎉" if k % 7 == 3 else ln for k, ln in enumerate(lines)]
    return ("\r\n" if crlf else "\n").join(lines) + "\n"


def _shards_in_order(cfg: Config, tok: TokenizerManager, path: str) -> list[CheckedShard]:
    mine = [s for s in check_all(cfg.data_dir, cfg, tok) if s.meta.sources[0].path == path]
    return sorted(mine, key=lambda s: s.meta.sources[0].byte_range)


def _flags(cfg: Config, shard: CheckedShard) -> list[int]:
    docs = shard.meta.documents
    assert docs is not None
    return read_documents(cfg.data_dir / docs.name, docs)["flags"].tolist()


@pytest.mark.parametrize(
    ("backend", "boundary", "crlf"),
    [
        ("byte", "file", True),
        ("hf", "file", False),
        ("tiktoken", "file", False),
        ("hf", "blank_line", False),
        ("tiktoken", "blank_line", False),
        ("byte", "blank_line", True),  # "\r\n" reads as "\n": also where a cut follows it
    ],
)
def test_a_document_over_shard_bytes_is_cut_into_shards_whose_ids_are_the_whole_ones(
    workspace: Path, request: pytest.FixtureRequest, backend: str, boundary: str, crlf: bool
) -> None:
    tok_cfg: TokenizerConfig = request.getfixturevalue(f"{backend}_tokenizer_config")
    tok = TokenizerManager.from_config(tok_cfg)
    assert tok.cut_rule is not None
    big = _paragraph(20 * KB, 3, crlf)
    text = _paragraph(1 * KB, 1, crlf) + "\n" + big + "\n\n" + _paragraph(1 * KB, 2, crlf)
    raw = workspace / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "a.txt").write_bytes(text.encode())
    data = text.encode()
    cfg = make_config(tok_cfg, document_boundary=boundary, shard_bytes=4 * KB)
    summary = tokenize(cfg)
    shards = _shards_in_order(cfg, tok, "data/raw/a.txt")
    assert len(summary.shards) == len(shards) >= 5
    ranges = [tuple(s.meta.sources[0].byte_range) for s in shards]
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all(b - a <= cfg.data.shard_bytes for a, b in ranges)  # none kept whole
    inside = [tuple(s.meta.sources[0].inside_document) for s in shards]
    assert inside[0][0] is False and inside[-1][1] is False
    assert all(a[1] == b[0] for a, b in itertools.pairwise(inside))  # both sides of each cut agree
    assert sum(i[1] for i in inside) >= 4
    for shard, (a, b), cut in zip(shards, ranges, inside):
        flags = _flags(cfg, shard)
        assert flags[0] & DOC_CONTINUED == (DOC_CONTINUED if cut[0] else 0)
        assert flags[-1] & DOC_CONTINUES == (DOC_CONTINUES if cut[1] else 0)
        assert not any(flags[1:-1])
        if backend != "byte":  # cuts between a line end and an ASCII letter, never elsewhere
            assert not cut[1] or (data[b - 1 : b] == b"\n" and data[b : b + 1].isalpha())
        if boundary == "file":  # every part reads as its bytes (blank_line: a line end joins)
            docs = documents(Path(shard.meta.sources[0].path), cfg, a, b)
            assert np.array_equal(shard.ids, part_ids(docs, tok, cfg, cut))
    # the same ids, in order, as one shard of the whole file (and so as any world size)
    whole_cfg = make_config(tok_cfg, document_boundary=boundary, dir="whole", shard_bytes=1 << 20)
    tokenize(whole_cfg)
    (whole,) = check_all(whole_cfg.data_dir, whole_cfg, tok)
    assert not any(_flags(whole_cfg, whole))
    assert np.array_equal(np.concatenate([s.ids for s in shards]), whole.ids)
    assert tokenize(cfg).shards == []  # up to date


def test_a_lost_part_of_a_cut_document_is_redone_as_the_same_part(
    workspace: Path, hf_tokenizer_config: TokenizerConfig
) -> None:
    """A run stopped midway (here: middle parts' shards deleted) redoes only those byte
    ranges, and each still starts and ends inside the document as its neighbours say."""
    tok = TokenizerManager.from_config(hf_tokenizer_config)
    raw = workspace / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "a.txt").write_text(_paragraph(24 * KB, 5))
    cfg = make_config(hf_tokenizer_config, document_boundary="file", shard_bytes=4 * KB)
    first = tokenize(cfg)
    before = {s.shard_id for s in first.shards}
    gone = [first.shards[1], first.shards[2], first.shards[-1]]
    for shard in gone:
        for extra in cfg.data_dir.glob(f"{shard.stem}.*"):
            extra.unlink()
    again = tokenize(cfg)
    assert sorted(s.shard_id for s in again.shards) == sorted(s.shard_id for s in gone)
    assert all(s.why == ["resumed"] for s in again.shards)
    assert {s.meta.shard_id for s in check_all(cfg.data_dir, cfg, tok)} == before


def test_without_a_cut_rule_a_big_document_stays_one_shard(
    workspace: Path, sp_tokenizer_config: TokenizerConfig
) -> None:
    tok = TokenizerManager.from_config(sp_tokenizer_config)
    assert tok.cut_rule is None
    raw = workspace / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "a.txt").write_text(_paragraph(12 * KB, 4))
    cfg = make_config(sp_tokenizer_config, document_boundary="file", shard_bytes=4 * KB)
    assert len(tokenize(cfg).shards) == 1
    (checked,) = check_all(cfg.data_dir, cfg, tok)
    assert tuple(checked.meta.sources[0].inside_document) == (False, False)
    assert _flags(cfg, checked) == [0]


def test_units_cut_inside_a_document_only_where_the_rule_allows(
    workspace: Path, hf_tokenizer_config: TokenizerConfig, byte_tokenizer_config: TokenizerConfig
) -> None:
    """No safe point in the last SAFE_SEARCH_BYTES before a target (one huge line for
    the newline-letter rule): the document is one unit, as before. JSON records are never
    cut inside. Units of a sub-range are those of the whole file there, flags included."""
    raw = workspace / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "line.txt").write_text("word " * 4000 + "\nEnd\n")
    (raw / "rec.jsonl").write_text(json.dumps({"text": "x" * 20_000}) + "\n")
    (raw / "prose.txt").write_text(_paragraph(40 * KB, 6))
    line, prose, rec = sorted(resolve_sources([str(raw)]), key=lambda s: s.path.name)
    hf_rule = TokenizerManager.from_config(hf_tokenizer_config).cut_rule
    any_rule = TokenizerManager.from_config(byte_tokenizer_config).cut_rule
    (unit,) = work_units(line, boundary="file", target_bytes=4 * KB, cut_rule=hf_rule)
    assert (unit.start, unit.end, unit.open_start, unit.open_end) == (0, line.size, False, False)
    assert len(work_units(line, boundary="file", target_bytes=4 * KB, cut_rule=any_rule)) == 5
    assert len(work_units(rec, boundary="line", target_bytes=4 * KB, cut_rule=any_rule)) == 1
    units = work_units(prose, boundary="file", target_bytes=4 * KB, cut_rule=hf_rule)
    assert len(units) >= 10 and all(u.open_end for u in units[:-1])
    part = work_units(
        prose,
        boundary="file",
        target_bytes=4 * KB,
        cut_rule=hf_rule,
        start=units[2].start,
        end=units[6].end,
    )
    assert part == units[2:7]


def test_the_shared_plan_keeps_where_items_start_and_end_inside_documents(
    workspace: Path,
) -> None:
    """Ranks other than the owner read their jobs from plan.json: the flags travel there."""
    raw = workspace / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "a.txt").write_text("hello\n" * 100)
    (source,) = resolve_sources([str(raw)])
    items = [
        WorkItem(source, 0, 300, None, "new", False, True),
        WorkItem(source, 300, 600, "ab" * 32, "new", True, False),
    ]
    plan = TokenizePlan([ShardJob(items[:1]), ShardJob(items[1:])], [], [], [])
    data = json.loads(json.dumps(_plan_to_json(plan)))
    back = _plan_from_json(data, workspace / "data", workspace / "plan.json")
    got = [(i.start, i.end, i.open_start, i.open_end) for j in back.jobs for i in j.items]
    assert got == [(0, 300, False, True), (300, 600, True, False)]
