"""What ``train`` hashes before step 1: each file it reads at most once, nothing unchanged since
the last run, never a ``.jsonl`` beside the ``.bin`` it reads — and still no damaged shard."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from allllm.config import load_config
from allllm.data import digest_cache, registry_entries
from allllm.data.tokenize.run import tokenize
from allllm.errors import DataError
from allllm.train.options import QuietReporter, TrainOptions
from allllm.train.session import train
from allllm.use.status import build_status
from train_helpers import make_workspace

HOUR_S = 3600


@pytest.fixture()
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALLLLM_DEBUG", raising=False)
    torch.set_num_threads(1)
    digest_cache.forget_own_digests()  # another test's hashes of other files must not count
    make_workspace(tmp_path, n_files=2, words=400)
    tokenize(load_config(model="micro"))
    return tmp_path


@pytest.fixture()
def hashed(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Bytes hashed per shard file name by the shard checks (digest_problem's file_sha256)."""
    counts: Counter[str] = Counter()
    real = registry_entries.file_sha256

    def counting(path: Path, chunk: int = 1 << 22) -> str:
        counts[Path(path).name] += os.path.getsize(path)
        return real(path, chunk)

    monkeypatch.setattr(registry_entries, "file_sha256", counting)
    return counts


def _files(ws: Path, suffix: str) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted((ws / "data").glob(f"*.cached.*{suffix}"))}


def _age(ws: Path) -> None:
    """Shards written an hour ago: the digest cache trusts them (not racily clean)."""
    old = time.time() - HOUR_S
    for path in (ws / "data").glob("*.cached.*"):
        os.utime(path, (old, old))


def _train(**kw: object) -> tuple[object, QuietReporter]:
    reporter = QuietReporter()
    result = train(load_config(model="micro"), TrainOptions(**kw), reporter)  # type: ignore[arg-type]
    return result, reporter


def test_train_hashes_each_read_file_once_and_never_the_jsonl(
    ws: Path, hashed: Counter[str]
) -> None:
    # freshly tokenized files are racily clean: the on-disk cache alone would hash them twice
    bins, docs, jsonl = _files(ws, ".bin"), _files(ws, ".docs"), _files(ws, ".jsonl")
    assert bins and docs and len(jsonl) == len(bins)
    result, _ = _train(only_new=True)
    assert result.status == "trained"  # type: ignore[attr-defined]
    assert dict(hashed) == {**bins, **docs}  # each read file exactly once, whole
    assert not set(hashed) & set(jsonl)


def test_a_second_run_over_unchanged_shards_hashes_nothing(ws: Path, hashed: Counter[str]) -> None:
    _age(ws)
    first, _ = _train(only_new=True, max_steps=1)  # leaves a pending run over the same shards
    assert first.status == "bounded"  # type: ignore[attr-defined]
    assert dict(hashed) == {**_files(ws, ".bin"), **_files(ws, ".docs")}
    hashed.clear()
    digest_cache.forget_own_digests()  # as a new process: only data/.allllm/digests.json
    second, _ = _train(only_new=True)
    assert second.status == "trained"  # type: ignore[attr-defined]
    assert sum(hashed.values()) == 0, hashed


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the digest tells
    path.write_bytes(bytes(data))


def test_a_damaged_bin_is_still_skipped(ws: Path, hashed: Counter[str]) -> None:
    _age(ws)
    (damaged,) = [p for p in (ws / "data").glob("part0.*.bin")]
    _flip(damaged)
    result, rep = _train(only_new=True, max_steps=1)
    assert result.status == "bounded"  # type: ignore[attr-defined]
    assert any("skipping part0" in w and "digest mismatch" in w for w in rep.warnings)


def test_a_bin_damaged_under_a_pending_run_is_refused_despite_the_cache(
    ws: Path, hashed: Counter[str]
) -> None:
    _age(ws)
    _train(only_new=True, max_steps=1)  # the cache now holds every read file's digest
    digest_cache.forget_own_digests()
    hashed.clear()
    (damaged,) = [p for p in (ws / "data").glob("part1.*.bin")]
    _flip(damaged)  # a new mtime: the cache re-hashes it
    with pytest.raises(DataError, match=r"part1\..*digest mismatch"):
        _train(only_new=True)
    assert hashed[damaged.name] == damaged.stat().st_size  # once; the intact rest: from cache
    assert sum(hashed.values()) == hashed[damaged.name]


def test_a_damaged_jsonl_beside_its_bin_is_left_to_status(ws: Path, hashed: Counter[str]) -> None:
    (jsonl,) = [p for p in (ws / "data").glob("part0.*.jsonl")]
    _flip(jsonl)
    result, rep = _train(only_new=True, max_steps=1)  # reads the .bin, which is intact
    assert result.status == "bounded"  # type: ignore[attr-defined]
    assert not any("skipping" in w for w in rep.warnings)
    assert jsonl.name not in hashed
    report = build_status(load_config(model="micro"), verify=True)
    (entry,) = [s for s in report["shards"] if s["name"].startswith("part0.")]
    assert entry["state"] == "invalid" and "digest mismatch" in entry["reason"]
