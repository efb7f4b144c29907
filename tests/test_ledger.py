"""The document ledger's storage (data/ledger.py, data/ledger_merge.py): segments, lookup, merge, cleanup."""

from __future__ import annotations

import hashlib
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from allllm.data import ledger as ledger_mod
from allllm.data.ledger import (
    KIND_HELD_OUT,
    KIND_TRAINED,
    LEDGER_DIR,
    LEDGER_FORMAT,
    RECORD_DTYPE,
    Ledger,
    SegmentRef,
    check_segments,
    clean_unlisted,
    merge_segments,
    plan_merge,
    write_segment,
)
from allllm.errors import DataError, FormatVersionError
from allllm.util.atomic import file_mode

TOP = np.iinfo(np.uint64).max
#: a few hi values, so equal hi with different lo is common (and unsigned order matters)
HI_POOL = np.array([0, 1, 2, 7, 1 << 32, 1 << 63, (1 << 63) + 5, TOP - 1, TOP], np.uint64)


def random_docs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """(hi, lo, kind, step): hi from HI_POOL or random, lo often shared, both kinds."""
    hi = np.where(
        rng.random(n) < 0.7,
        HI_POOL[rng.integers(0, HI_POOL.size, n)],
        rng.integers(0, TOP, n, dtype=np.uint64, endpoint=True),
    )
    lo = np.where(
        rng.random(n) < 0.7,
        HI_POOL[rng.integers(0, HI_POOL.size, n)],
        rng.integers(0, TOP, n, dtype=np.uint64, endpoint=True),
    )
    kind = rng.choice([KIND_TRAINED, KIND_HELD_OUT], n).astype(np.uint32)
    step = rng.integers(0, 1000, n).astype(np.uint32)
    return hi.astype(np.uint64), lo.astype(np.uint64), kind, step


def reference(parts: list[tuple[np.ndarray, ...]]) -> tuple[dict, set]:
    """Python truth: (hi, lo) -> earliest trained step, and the held-out set."""
    trained: dict[tuple[int, int], int] = {}
    held: set[tuple[int, int]] = set()
    for hi, lo, kind, step in parts:
        for h, lo_, k, s in zip(hi.tolist(), lo.tolist(), kind.tolist(), step.tolist()):
            if k == KIND_TRAINED:
                trained[(h, lo_)] = min(trained.get((h, lo_), s), s)
            else:
                held.add((h, lo_))
    return trained, held


def read_records(path: Path) -> np.ndarray:
    return np.fromfile(path, RECORD_DTYPE, offset=32)


def set_header(path: Path, **fields: int | bytes) -> None:
    """Rewrite fields of a segment's header in place (magic, version, size, count)."""
    raw = bytearray(path.read_bytes())
    magic, version, size, count = struct.unpack_from("<8sIIQ", raw)
    values = {"magic": magic, "version": version, "size": size, "count": count, **fields}
    struct.pack_into("<8sIIQ", raw, 0, *values.values())
    path.write_bytes(bytes(raw))


# --- lookup --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block_records", "query_chunk"), [(1, 2), (7, 3), (7, 1 << 16), (1 << 20, 5)]
)
def test_lookup_equals_a_set_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_records: int, query_chunk: int
) -> None:
    monkeypatch.setattr(ledger_mod, "_QUERY_CHUNK", query_chunk)  # queries matched at once
    rng = np.random.default_rng(block_records + query_chunk)
    parts = [random_docs(rng, n) for n in (150, 90, 1, 40)]
    refs = [write_segment(tmp_path, *p) for p in parts]
    trained, held = reference(parts)
    known = np.array(sorted(set(trained) | held), dtype=np.uint64)
    absent = np.stack(random_docs(rng, 60)[:2], axis=1)
    queries = np.concatenate([known, known[::3], absent])  # present, duplicated, absent
    queries = queries[rng.permutation(len(queries))]
    qhi, qlo = queries[:, 0].copy(), queries[:, 1].copy()

    found = Ledger(tmp_path, refs, block_records=block_records).lookup(qhi, qlo)

    keys = list(zip(qhi.tolist(), qlo.tolist()))
    assert found.trained.tolist() == [k in trained for k in keys]
    assert found.held_out.tolist() == [k in held for k in keys]
    assert found.step.tolist() == [trained.get(k, -1) for k in keys]
    assert found.step.dtype == np.int64 and found.trained.dtype == bool
    assert found.trained.any() and found.held_out.any() and (found.trained & found.held_out).any()
    assert not (found.trained | found.held_out).all()  # some queries are absent


def test_lookup_equal_hi_many_lo_and_block_edges(tmp_path: Path) -> None:
    # one hi with 30 lo values, each trained and held out: runs of equal hi span blocks
    lo = np.arange(30, dtype=np.uint64) * 3
    hi = np.full(60, 1 << 63, np.uint64)
    kind = np.repeat([KIND_TRAINED, KIND_HELD_OUT], 30).astype(np.uint32)
    step = np.arange(60, dtype=np.uint32)
    ref = write_segment(tmp_path, hi, np.concatenate([lo, lo]), kind, step)
    qlo = np.arange(92, dtype=np.uint64)
    for block_records in (1, 2, 5, 7, 64):
        found = Ledger(tmp_path, [ref], block_records=block_records).lookup(
            np.full(qlo.size, 1 << 63, np.uint64), qlo
        )
        present = (qlo % 3 == 0) & (qlo < 90)
        assert found.trained.tolist() == present.tolist()
        assert found.held_out.tolist() == present.tolist()
        assert found.step.tolist() == np.where(present, qlo.astype(np.int64) // 3, -1).tolist()


def test_step_is_the_earliest_trained_record(tmp_path: Path) -> None:
    one = np.array([5], np.uint64)
    a = write_segment(tmp_path, one, one, np.array([KIND_TRAINED]), 40)
    b = write_segment(tmp_path, one, one, np.array([KIND_TRAINED]), 30)
    c = write_segment(tmp_path, one, one, np.array([KIND_HELD_OUT]), 2)
    found = Ledger(tmp_path, [a, b, c]).lookup(one, one)
    assert (found.trained[0], found.held_out[0], found.step[0]) == (True, True, 30)
    held_only = Ledger(tmp_path, [c]).lookup(one, one)
    assert (held_only.trained[0], held_only.held_out[0], held_only.step[0]) == (False, True, -1)


def test_empty_queries_and_empty_ledger(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ref = write_segment(tmp_path, *random_docs(rng, 20))
    empty = np.zeros(0, np.uint64)
    found = Ledger(tmp_path, [ref]).lookup(empty, empty)
    assert found.trained.size == found.held_out.size == found.step.size == 0
    hi, lo = random_docs(rng, 5)[:2]
    nothing = Ledger(tmp_path, []).lookup(hi, lo)
    assert not nothing.trained.any() and not nothing.held_out.any()
    assert nothing.step.tolist() == [-1] * 5
    zero = write_segment(tmp_path, empty, empty, np.zeros(0, np.uint32), 0)
    assert zero.count == 0
    assert not Ledger(tmp_path, [zero], block_records=2).lookup(hi, lo).trained.any()


def test_ledger_count_version_and_records(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    parts = [random_docs(rng, n) for n in (30, 12)]
    a, b = (write_segment(tmp_path, *p) for p in parts)
    ledger = Ledger(tmp_path, [a, b], block_records=4)
    assert ledger.count == a.count + b.count
    assert ledger.segments == [a, b]
    assert ledger.version == Ledger(tmp_path, [b, a]).version != Ledger(tmp_path, [a]).version
    blocks = list(ledger.iter_records())
    assert all(blk.size <= 4 for blk in blocks)
    records = np.concatenate(blocks)
    assert records.size == ledger.count
    expected = np.concatenate([read_records(tmp_path / a.name), read_records(tmp_path / b.name)])
    assert records.tobytes() == expected.tobytes()


# --- writing -------------------------------------------------------------------------------


def test_segment_format_sorted_unique_and_content_addressed(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    hi, lo, kind, step = random_docs(rng, 300)
    ref = write_segment(tmp_path, hi, lo, kind, step)
    path = tmp_path / ref.name
    raw = path.read_bytes()
    assert raw[:8] == b"ALLLLEDG"
    assert struct.unpack_from("<IIQ", raw, 8) == (LEDGER_FORMAT.current, 24, ref.count)
    assert raw[24:32] == bytes(8)
    assert ref.sha256 == hashlib.sha256(raw).hexdigest()
    assert ref.name == f"seg-{ref.sha256[:16]}.ledger"
    assert path.stat().st_mode & 0o777 == file_mode()
    rec = read_records(path)
    keys = list(zip(rec["hi"].tolist(), rec["lo"].tolist(), rec["kind"].tolist()))
    assert keys == sorted(set(keys))  # sorted by (hi, lo, kind), no duplicate
    best: dict[tuple[int, int, int], int] = {}
    for key in zip(hi.tolist(), lo.tolist(), kind.tolist(), step.tolist()):
        best[key[:3]] = min(best.get(key[:3], key[3]), key[3])
    assert sorted(best) == keys
    assert rec["step"].tolist() == [best[k] for k in keys]  # the smallest step kept


def test_write_is_idempotent(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    hi, lo, kind, step = random_docs(rng, 100)
    ref = write_segment(tmp_path, hi, lo, kind, step)
    before = (tmp_path / ref.name).stat()
    shuffle = rng.permutation(100)
    again = write_segment(tmp_path, hi[shuffle], lo[shuffle], kind[shuffle], step[shuffle])
    after = (tmp_path / ref.name).stat()
    assert again == ref
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # reused
    other = write_segment(tmp_path, hi, lo, kind, step + 1)
    assert other.name != ref.name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ref.name, other.name])


def test_write_replaces_a_damaged_file_of_its_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    docs = random_docs(rng, 50)
    ref = write_segment(tmp_path, *docs)
    path = tmp_path / ref.name
    path.write_bytes(path.read_bytes()[:-5])
    assert write_segment(tmp_path, *docs) == ref
    assert check_segments(tmp_path, [ref], full=True) == []


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        write_segment(tmp_path, *random_docs(np.random.default_rng(8), 10))
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_bad_input(tmp_path: Path) -> None:
    one = np.array([1], np.uint64)
    with pytest.raises(ValueError, match="kind"):
        write_segment(tmp_path, one, one, np.array([3]), 0)
    with pytest.raises(ValueError, match="shape"):
        write_segment(tmp_path, one, np.array([1, 2], np.uint64), np.array([1]), 0)
    with pytest.raises(ValueError, match="step"):
        write_segment(tmp_path, one, one, np.array([1]), -1)
    with pytest.raises(ValueError, match="negative"):
        write_segment(tmp_path, np.array([-1]), one, np.array([1]), 0)


# --- merging -------------------------------------------------------------------------------


@pytest.mark.parametrize("block_records", [1, 2, 5, 1 << 20])
def test_merge_equals_concatenation_and_dedup(tmp_path: Path, block_records: int) -> None:
    rng = np.random.default_rng(9)
    parts = [random_docs(rng, n) for n in (80, 1, 45, 0, 60)]
    parts.append(tuple(a[:20].copy() for a in parts[0]))  # the same documents, other steps
    parts[-1][3][:] = 999
    refs = [write_segment(tmp_path, *p) for p in parts]
    merged = merge_segments(tmp_path, refs, block_records=block_records)
    # the same records as writing everything at once: the same content, the same name
    whole = write_segment(tmp_path, *(np.concatenate([p[i] for p in parts]) for i in range(4)))
    assert merged == whole
    assert all((tmp_path / r.name).exists() for r in refs)  # inputs are kept
    assert check_segments(tmp_path, [merged], full=True) == []
    trained, held = reference(parts)
    keys = sorted(set(trained) | held)
    qhi, qlo = (np.array([k[i] for k in keys], np.uint64) for i in (0, 1))
    found = Ledger(tmp_path, [merged], block_records=3).lookup(qhi, qlo)
    assert found.step.tolist() == [trained.get(k, -1) for k in keys]  # the earliest step kept


def test_merge_refuses_an_unsorted_segment(tmp_path: Path) -> None:
    records = np.zeros(3, RECORD_DTYPE)
    records["hi"] = [3, 1, 2]
    records["kind"] = KIND_TRAINED
    raw = struct.pack("<8sIIQ8x", b"ALLLLEDG", 1, 24, 3) + records.tobytes()
    sha = hashlib.sha256(raw).hexdigest()
    ref = SegmentRef(f"seg-{sha[:16]}.ledger", sha, 3)
    (tmp_path / ref.name).write_bytes(raw)
    good = write_segment(tmp_path, np.array([9], np.uint64), np.array([9], np.uint64), [1], 0)
    with pytest.raises(DataError, match="not sorted"):
        merge_segments(tmp_path, [good, ref], block_records=2)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _fake_refs(counts: list[int], first: int = 0) -> list[SegmentRef]:
    return [
        SegmentRef(f"seg-{first + i:016x}.ledger", f"{first + i:016x}" + "0" * 48, c)
        for i, c in enumerate(counts)
    ]


def _apply(segments: list[SegmentRef], group: list[SegmentRef], serial: int) -> list[SegmentRef]:
    at = segments.index(group[0])
    assert segments[at : at + len(group)] == group  # a consecutive group
    merged = _fake_refs([sum(g.count for g in group)], first=serial)
    return segments[:at] + merged + segments[at + len(group) :]


@pytest.mark.parametrize("sizes", ["equal", "random", "big-then-small"])
def test_plan_merge_keeps_the_cap_at_n_log_n_cost(sizes: str) -> None:
    rng = np.random.default_rng(10)
    runs = 600
    counts = {
        "equal": [1000] * runs,
        "random": rng.integers(1, 100_000, runs).tolist(),
        "big-then-small": [10**6] * 8 + [1] * runs,
    }[sizes]
    segments: list[SegmentRef] = []
    written = 0
    for i, count in enumerate(counts):
        segments = [*segments, *_fake_refs([count], first=i)]
        written += count
        group = plan_merge(segments, max_segments=8)
        if group:
            assert len(group) >= 2
            written += sum(g.count for g in group)
            segments = _apply(segments, group, 10**6 + i)
        assert len(segments) <= 8
    total = sum(counts)
    assert sum(s.count for s in segments) == total
    # each record is rewritten about log2(runs) times, never once per run
    assert written / total < 2 * math.log2(len(counts))


def test_plan_merge_merges_small_ones_first() -> None:
    assert plan_merge(_fake_refs([5, 4, 3]), max_segments=3) == []
    big = _fake_refs([10**6, 10**5, 10**4, 500, 3, 2, 2, 1, 1])
    assert plan_merge(big, max_segments=8) == big[4:]  # the small new ones, not the big old
    assert plan_merge(_fake_refs([100, 100, 1]), max_segments=2)[0].count == 100
    many = _fake_refs([1000] * 12)
    group = plan_merge(many, max_segments=8)
    assert len(many) - len(group) + 1 <= 8
    with pytest.raises(ValueError):
        plan_merge(many, max_segments=1)


# --- checks and cleanup --------------------------------------------------------------------


def test_check_segments_finds_damage(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    ok, short, flipped, wrong_magic, miscount = (
        write_segment(tmp_path, *random_docs(rng, 40)) for _ in range(5)
    )
    gone = SegmentRef("seg-" + "0" * 16 + ".ledger", "0" * 64, 3)
    (tmp_path / short.name).write_bytes((tmp_path / short.name).read_bytes()[:-24])
    raw = bytearray((tmp_path / flipped.name).read_bytes())
    raw[40] ^= 1
    (tmp_path / flipped.name).write_bytes(bytes(raw))
    set_header(tmp_path / wrong_magic.name, magic=b"NOTLEDGR")
    set_header(tmp_path / miscount.name, count=miscount.count + 1)
    refs = [ok, short, flipped, wrong_magic, miscount, gone]
    quick = dict((r.name, why) for r, why in check_segments(tmp_path, refs))
    assert set(quick) == {short.name, wrong_magic.name, miscount.name, gone.name}
    assert quick[gone.name] == "missing"
    assert "truncated" in quick[short.name]
    assert "magic" in quick[wrong_magic.name]
    assert "its checkpoint lists" in quick[miscount.name]
    full = dict((r.name, why) for r, why in check_segments(tmp_path, refs, full=True))
    assert set(full) == set(quick) | {flipped.name}
    assert "sha256" in full[flipped.name]
    assert all("\n" not in why for why in full.values())


def test_a_newer_segment_is_refused_never_damaged(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    ref = write_segment(tmp_path, *random_docs(rng, 20))
    set_header(tmp_path / ref.name, version=LEDGER_FORMAT.current + 1)
    with pytest.raises(FormatVersionError, match=r"ledger segment of format_version 2") as err:
        check_segments(tmp_path, [ref], full=True)
    assert "\n" not in str(err.value)
    hi, lo = random_docs(rng, 3)[:2]
    with pytest.raises(FormatVersionError):
        Ledger(tmp_path, [ref]).lookup(hi, lo)
    with pytest.raises(FormatVersionError):
        merge_segments(tmp_path, [ref])


def test_reading_a_damaged_segment_names_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    ref = write_segment(tmp_path, *random_docs(rng, 20))
    hi, lo = random_docs(rng, 3)[:2]
    (tmp_path / ref.name).write_bytes((tmp_path / ref.name).read_bytes()[:-1])
    with pytest.raises(DataError, match=rf"{ref.name}: ledger segment truncated"):
        Ledger(tmp_path, [ref]).lookup(hi, lo)
    (tmp_path / ref.name).unlink()
    with pytest.raises(DataError, match=rf"{ref.name}: ledger segment not found"):
        Ledger(tmp_path, [ref]).lookup(hi, lo)
    with pytest.raises(DataError, match="not found"):
        list(Ledger(tmp_path, [ref]).iter_records())


def test_segment_ref_round_trip_and_malformed() -> None:
    ref = SegmentRef("seg-0123456789abcdef.ledger", "0123456789abcdef" + "a" * 48, 7)
    assert SegmentRef.from_dict(ref.to_dict(), "state") == ref
    bad = [
        "not a dict",
        {"name": ref.name, "sha256": ref.sha256},
        {**ref.to_dict(), "extra": 1},
        {**ref.to_dict(), "name": "seg-xyz.ledger"},
        {**ref.to_dict(), "sha256": "A" * 64},
        {**ref.to_dict(), "sha256": "f" * 64},  # does not match the name
        {**ref.to_dict(), "count": -1},
        {**ref.to_dict(), "count": True},
        {**ref.to_dict(), "count": "7"},
    ]
    for data in bad:
        with pytest.raises(DataError, match=r"^trainer_state\.json: ledger segment entry") as err:
            SegmentRef.from_dict(data, "trainer_state.json")
        assert "\n" not in str(err.value)


def test_clean_unlisted_removes_only_unlisted_segments_and_temporaries(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    keep, drop = (write_segment(tmp_path, *random_docs(rng, 10)) for _ in range(2))
    temp = ".seg-4242-0badf00d.ledger.tmp"
    others = [
        "status-cache.json", "seg-notahash.ledger", ".seg-foo.tmp", "notes.txt",
        "seg-0123456789abcdef.ledger.bak",
    ]  # fmt: skip
    for name in [temp, *others]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "seg-fedcba9876543210.ledger").mkdir()  # not a plain file: left alone
    removed = clean_unlisted(tmp_path, {keep.name})
    assert removed == sorted([temp, drop.name])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([keep.name, "seg-fedcba9876543210.ledger", *others])
    assert clean_unlisted(tmp_path, {keep.name}) == []
    assert clean_unlisted(tmp_path / "absent", set()) == []


_KILLED = """
import sys
from pathlib import Path
import numpy as np
from allllm.data.ledger import write_segment, merge_segments
d = Path(sys.argv[1])
a = write_segment(d, np.arange(5, dtype=np.uint64), np.arange(5, dtype=np.uint64), [1] * 5, 3)
b = write_segment(d, np.arange(9, dtype=np.uint64), np.zeros(9, np.uint64), [2] * 9, 4)
merge_segments(d, [a, b], block_records=2)
print("not killed")
"""


@pytest.mark.parametrize("point", ["ledger.segment", "ledger.merge"])
def test_a_killed_write_leaves_a_whole_segment_or_a_temporary(tmp_path: Path, point: str) -> None:
    env = {**os.environ, "ALLLLM_FAULT": point}
    done = subprocess.run(
        [sys.executable, "-c", _KILLED, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert done.returncode == -9 and "not killed" not in done.stdout
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == (1 if point == "ledger.segment" else 3)
    # killed after the rename: each segment in place is whole (its name is its content)
    refs = []
    for name in names:
        raw = (tmp_path / name).read_bytes()
        sha = hashlib.sha256(raw).hexdigest()
        assert name == f"seg-{sha[:16]}.ledger"
        refs.append(SegmentRef(name, sha, (len(raw) - 32) // 24))
    assert check_segments(tmp_path, refs, full=True) == []
    # a kill in the middle of a write leaves a temporary: the next cleanup removes it
    (tmp_path / f".seg-{os.getpid()}-deadbeef.ledger.tmp").write_bytes(b"ALLLLEDG\x01")
    assert clean_unlisted(tmp_path, set(names)) == [f".seg-{os.getpid()}-deadbeef.ledger.tmp"]
    rerun = subprocess.run([sys.executable, "-c", _KILLED, str(tmp_path)], capture_output=True)
    assert rerun.returncode == 0
    assert all(p.name.startswith("seg-") for p in tmp_path.iterdir())


def test_the_trainer_merges_once_more_than_eight_segments_are_listed(tmp_path: Path) -> None:
    """``ledger_sync.after_run``: a run's segment joins the list, the tiered merge keeps it short,
    and the merged ledger answers as the separate segments did."""
    from types import SimpleNamespace

    from allllm.train.ledger_sync import after_run

    cfg = SimpleNamespace(checkpoint_path=tmp_path)
    rng = np.random.default_rng(5)
    refs: list[dict] = []
    everything = []
    for run in range(12):
        hi = rng.integers(0, 2**63, 50, dtype=np.uint64)
        lo = rng.integers(0, 2**63, 50, dtype=np.uint64)
        everything.append((hi, lo))
        seg = write_segment(
            tmp_path / LEDGER_DIR, hi, lo, np.full(50, KIND_TRAINED, np.uint32), run
        )
        refs = after_run(cfg, refs, seg)  # type: ignore[arg-type]
        assert len(refs) <= 8
    ledger = Ledger(tmp_path / LEDGER_DIR, [SegmentRef.from_dict(r, "test") for r in refs])
    hi = np.concatenate([h for h, _ in everything])
    lo = np.concatenate([x for _, x in everything])
    found = ledger.lookup(hi, lo)
    assert found.trained.all()
    assert found.step.tolist() == [run for run in range(12) for _ in range(50)]
