"""The anchor pool: no (shard, row) repeats within a pass, exact resumes, pool changes mid-pass."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from allllm.data.anchor_pool import AnchorPool, PoolShards
from allllm.errors import DataError

POOL: PoolShards = [("a", 7), ("b", 11), ("c", 13)]  # R = 31


def _pairs(rows: dict[str, list[int]]) -> list[tuple[str, int]]:
    return [(sid, r) for sid, rs in rows.items() for r in rs]


def _every_row(shards: PoolShards) -> Counter[tuple[str, int]]:
    return Counter((sid, r) for sid, n in shards for r in range(n))


def _draws(pool: AnchorPool, shards: PoolShards, sizes: list[int]) -> tuple[list[Any], AnchorPool]:
    out = []
    for n in sizes:
        rows, pool = pool.draw(shards, n)
        out.append(rows)
    return out, pool


def test_a_pass_covers_every_row_once_then_a_new_shuffled_pass_begins() -> None:
    pool = AnchorPool.fresh(3)
    assert pool.remaining(POOL) == 31 and pool.pass_rows() == 0
    first, pool = _draws(pool, POOL, [5, 9, 4, 13])
    assert [len(_pairs(d)) for d in first] == [5, 9, 4, 13]
    assert Counter(p for d in first for p in _pairs(d)) == _every_row(POOL)
    assert all(rs == sorted(rs) for d in first for rs in d.values())
    assert (pool.pass_index, pool.cursor, pool.pass_rows(), pool.remaining(POOL)) == (0, 31, 31, 0)
    second, pool = _draws(pool, POOL, [5, 9, 4, 13])
    assert pool.pass_index == 1 and pool.cursor == 31
    assert Counter(p for d in second for p in _pairs(d)) == _every_row(POOL)
    assert [set(_pairs(d)) for d in second] != [set(_pairs(d)) for d in first]  # reshuffled


def test_round_trip_through_json_draws_the_same_rows_and_draw_leaves_self_alone() -> None:
    _, pool = _draws(AnchorPool.fresh(11), POOL, [6, 3])
    before = pool.to_dict()
    loaded = AnchorPool.from_dict(json.loads(json.dumps(before)), seed=999)
    assert loaded == pool
    assert loaded.draw(POOL, 12) == pool.draw(POOL, 12)
    assert pool.to_dict() == before  # draw did not modify self
    assert pool.draw(POOL, 12) == pool.draw(POOL, 12)  # and so draws again the same


def test_same_seed_same_rows_and_another_seed_other_rows() -> None:
    sizes = [4, 10, 8]
    assert _draws(AnchorPool.fresh(5), POOL, sizes) == _draws(AnchorPool.fresh(5), POOL, sizes)
    assert (
        _draws(AnchorPool.fresh(5), POOL, sizes)[0] != _draws(AnchorPool.fresh(6), POOL, sizes)[0]
    )


def test_a_pool_change_mid_pass_keeps_the_undrawn_rows_adds_new_shards_and_drops_removed() -> None:
    drawn, pool = _draws(AnchorPool.fresh(21), POOL, [8, 5])
    seen = Counter(p for d in drawn for p in _pairs(d))
    changed: PoolShards = [("a", 7), ("c", 13), ("d", 6)]  # b removed, d added
    left = Counter({p: 1 for p in _every_row(changed) if p not in seen})
    assert pool.remaining(changed) == sum(left.values())
    rest, pool = _draws(pool, changed, [4, 9, sum(left.values()) - 13])
    assert Counter(p for d in rest for p in _pairs(d)) == left
    assert not any(sid == "b" for d in rest for sid in d)
    assert len(pool.blocks) == 2 and pool.pass_index == 0
    assert pool.pass_rows() == 13 + sum(left.values()) and pool.remaining(changed) == 0
    nxt, pool = _draws(pool, changed, [10, 16])
    assert pool.pass_index == 1 and len(pool.blocks) == 1
    assert Counter(p for d in nxt for p in _pairs(d)) == _every_row(changed)


def test_a_shard_added_when_the_pass_is_exhausted_ends_the_pass_before_the_reshuffle() -> None:
    _, pool = AnchorPool.fresh(9).draw(POOL, 31)
    grown: PoolShards = [*POOL, ("d", 6)]
    assert pool.remaining(POOL) == 0 and pool.remaining(grown) == 6
    rows, pool = pool.draw(grown, 6)
    assert rows == {"d": list(range(6))} and pool.pass_index == 0 and pool.pass_rows() == 37
    rows, pool = pool.draw(grown, 37)
    assert pool.pass_index == 1 and Counter(_pairs(rows)) == _every_row(grown)


def test_a_shard_whose_row_count_changed_is_removed_and_re_added() -> None:
    drawn, pool = _draws(AnchorPool.fresh(2), POOL, [20])
    changed: PoolShards = [("a", 7), ("b", 4), ("c", 13)]
    kept = {p for p in _every_row(changed) if p[0] != "b" and p not in set(_pairs(drawn[0]))}
    rest, pool = pool.draw(changed, pool.remaining(changed))
    assert Counter(_pairs(rest)) == Counter(kept | {("b", r) for r in range(4)})


def test_two_changes_in_one_pass_still_cover_each_row_once() -> None:
    pools = [POOL, [("a", 7), ("c", 13)], [("a", 7), ("c", 13), ("e", 9)]]
    pool, got = AnchorPool.fresh(8), Counter[tuple[str, int]]()
    for shards in pools:
        rows, pool = pool.draw(shards, 6)
        got.update(_pairs(rows))
    rows, pool = pool.draw(pools[-1], pool.remaining(pools[-1]))
    got.update(_pairs(rows))
    assert len(pool.blocks) == 3 and pool.pass_index == 0
    assert max(got.values()) == 1
    b_drawn = sum(c for p, c in got.items() if p[0] == "b")
    assert Counter({p: c for p, c in got.items() if p[0] != "b"}) == _every_row(pools[-1])
    assert pool.pass_rows() == pool.cursor == 7 + 13 + 9 + b_drawn


def test_more_rows_than_the_pool_repeats_only_across_passes() -> None:
    rows, pool = AnchorPool.fresh(1).draw(POOL, 2 * 31 + 5)
    counts = Counter(_pairs(rows))
    assert sum(counts.values()) == 67 and set(counts) == set(_every_row(POOL))
    assert sorted(Counter(counts.values()).items()) == [(2, 26), (3, 5)]
    assert all(rs == sorted(rs) for rs in rows.values())
    assert (pool.pass_index, pool.cursor, pool.remaining(POOL)) == (2, 5, 26)


def test_empty_pools_zero_rows_and_zero_row_shards() -> None:
    pool = AnchorPool.fresh(4)
    for shards, n in (([], 5), (POOL, 0), (POOL, -3), ([("z", 0)], 5)):
        rows, after = pool.draw(shards, n)
        assert rows == {} and after == pool and after is not pool
    assert pool.remaining([]) == 0
    rows, after = pool.draw([("z", 0), *POOL], 31)
    assert "z" not in rows and Counter(_pairs(rows)) == _every_row(POOL)
    assert after.blocks[0].shards == POOL  # the zero-row shard is not part of the pool
    assert after.draw([*POOL, ("z", 0)], 3)[1].pass_index == 1  # nor a change of it


@pytest.mark.parametrize(
    "data",
    [
        {},
        [],
        "pool",
        {"seed": 1, "pass_index": 0, "cursor": 0},
        {"seed": "1", "pass_index": 0, "cursor": 0, "blocks": []},
        {"seed": 1, "pass_index": 0, "cursor": 0, "blocks": [{"start": 0, "seed": 2}]},
        {"seed": 1, "pass_index": 0, "cursor": 3, "blocks": [{"start": 0, "seed": 2, "shards": 7}]},
        {
            "seed": 1,
            "pass_index": 0,
            "cursor": 3,
            "blocks": [{"start": 0, "seed": 2, "shards": [["a"]]}],
        },
        {
            "seed": 1,
            "pass_index": 0,
            "cursor": 3,
            "blocks": [{"start": 0, "seed": 2, "shards": [[1, 2]]}],
        },
        {"seed": 1, "pass_index": 0, "cursor": -1, "blocks": []},
        {
            "seed": 1,
            "pass_index": 0,
            "cursor": 3,
            "blocks": [{"start": 4, "seed": 2, "shards": []}],
        },
        {"seed": True, "pass_index": 0, "cursor": 0, "blocks": []},
        {
            "seed": 1,
            "pass_index": 0,
            "cursor": 3,
            "blocks": [{"start": 0, "seed": 2, "shards": [["b", 2], ["a", 3]]}],
        },
    ],
)
def test_a_malformed_stored_pool_is_a_one_line_data_error(data: Any) -> None:
    with pytest.raises(DataError, match="anchor pool is malformed") as err:
        AnchorPool.from_dict(data, seed=1)
    assert "\n" not in str(err.value)


def test_none_is_a_fresh_pool_and_the_stored_form_is_plain_json() -> None:
    assert AnchorPool.from_dict(None, 7) == AnchorPool.fresh(7)
    _, pool = AnchorPool.fresh(7).draw(POOL, 40)
    data = pool.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {"seed", "pass_index", "cursor", "blocks"}


def test_a_pool_of_five_million_rows_changes_mid_pass() -> None:
    """At scale (the draw's speed is a benchmark: benchmarks/bench_anchor_pool.py)."""
    shards: PoolShards = [(f"s{k:03d}", 50_000) for k in range(100)]
    first, pool = AnchorPool.fresh(0).draw(shards, 1_000_000)
    changed = [*shards[1:], ("t", 200_000)]  # s000 removed, t added
    rows, pool = pool.draw(changed, 500_000)
    assert sum(len(r) for r in rows.values()) == 500_000 and "s000" not in rows
    kept_undrawn = 99 * 50_000 - (1_000_000 - len(first.get("s000", [])))
    assert pool.pass_rows() == 1_000_000 + kept_undrawn + 200_000
    assert pool.remaining(changed) == kept_undrawn + 200_000 - 500_000
