"""The stat-keyed digest cache (data/.allllm/digests.json): up-to-date checks and shard
verification read a file again only when its stat changed or it was racily clean."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import pytest

from allllm.data import digest_cache, registry_entries
from allllm.data.digest_cache import RACY_NS, DigestCache
from allllm.data.registry import ScanSpec, TokenizerIdentity, scan_shards
from allllm.data.tokenize.run import tokenize
from allllm.errors import FormatVersionError
from shard_factory import TEST_FINGERPRINT, random_rows, write_shard
from tokenize_helpers import make_config, shard_stems

HOUR_NS = 3600 * 10**9


def _age(path: Path, ns: int = HOUR_NS) -> int:
    """Set ``path``'s mtime ``ns`` into the past (not racily clean); returns the mtime."""
    mtime = time.time_ns() - ns
    os.utime(path, ns=(mtime, mtime))
    return mtime


class Hasher:
    """A ``compute`` that counts the times it read the file."""

    def __init__(self, path: Path) -> None:
        self.path, self.calls = path, 0

    def __call__(self) -> str:
        self.calls += 1
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_unchanged_file_is_a_hit_and_survives_a_reload(data: Path) -> None:
    f = data / "a.txt"
    f.write_bytes(b"hello world\n")
    _age(f)
    cache = DigestCache.for_data_dir(data)
    compute = Hasher(f)
    assert cache.lookup(f) is None
    assert cache.sha256(f, compute) == _sha(b"hello world\n")
    assert cache.sha256(f, compute) == _sha(b"hello world\n") == cache.lookup(f)
    assert compute.calls == 1
    assert cache.save() and not cache.save()  # the second: nothing changed
    doc = json.loads((data / ".allllm" / "digests.json").read_text())
    assert doc["format_version"] == 1
    st = f.stat()
    assert doc["entries"] == {
        os.path.realpath(f): [
            st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev,
            doc["entries"][os.path.realpath(f)][4], _sha(b"hello world\n"),
        ]
    }  # fmt: skip
    again = DigestCache.for_data_dir(data)
    assert again.lookup(f) == _sha(b"hello world\n")
    assert not again.save()  # lookups alone change nothing


def test_a_change_of_size_or_mtime_is_a_miss(data: Path) -> None:
    f = data / "a.txt"
    f.write_bytes(b"one\n")
    mtime = _age(f)
    cache = DigestCache.for_data_dir(data)
    cache.sha256(f, Hasher(f))
    f.write_bytes(b"one, two\n")  # another size, the old mtime restored
    os.utime(f, ns=(mtime, mtime))
    assert cache.lookup(f) is None
    assert cache.sha256(f, Hasher(f)) == _sha(b"one, two\n")
    assert cache.lookup(f) == _sha(b"one, two\n")
    os.utime(f, ns=(mtime - 10**9, mtime - 10**9))  # same bytes, other mtime: a miss too
    assert cache.lookup(f) is None


def test_a_racily_clean_entry_is_hashed_again(data: Path) -> None:
    """Recorded less than RACY_NS after the file's mtime: an edit of the same size in that
    tick, which kept the mtime, must still be seen."""
    f = data / "a.txt"
    f.write_bytes(b"aaaa\n")
    mtime = f.stat().st_mtime_ns
    cache = DigestCache.for_data_dir(data)
    assert cache.sha256(f, Hasher(f)) == _sha(b"aaaa\n")  # recorded right after the write
    f.write_bytes(b"bbbb\n")  # same size, same inode
    os.utime(f, ns=(mtime, mtime))  # and the mtime it had when it was recorded
    assert f.stat().st_mtime_ns < time.time_ns() < mtime + RACY_NS  # still within the racy span
    assert cache.lookup(f) is None
    compute = Hasher(f)
    assert cache.sha256(f, compute) == _sha(b"bbbb\n") and compute.calls == 1


def test_a_newer_format_is_refused_and_a_corrupt_file_ignored(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = data / ".allllm" / "digests.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"format_version": 2, "entries": {}}))
    with pytest.raises(FormatVersionError, match="delete the file: it is a cache") as err:
        DigestCache.for_data_dir(data)
    assert "digests.json: digest cache of format_version 2" in str(err.value)
    assert "\n" not in str(err.value)
    for broken in ('{"format_version": 1, "entries": {', "\xff\xfe", "[]", '{"entries": {}}'):
        path.write_text(broken, encoding="latin-1")
        with caplog.at_level(logging.WARNING, logger=digest_cache.__name__):
            cache = DigestCache.for_data_dir(data)
        assert len(cache) == 0 and "ignoring the digest cache" in caplog.text
        caplog.clear()
    f = data / "a.txt"
    f.write_bytes(b"x")
    _age(f)
    good = [1, 2, 3, 4, 5, "0" * 64]
    path.write_text(json.dumps({"format_version": 1, "entries": {"/x": good, "/y": [1, "a"]}}))
    cache = DigestCache.for_data_dir(data)  # a malformed entry is dropped, the others kept
    assert len(cache) == 1
    cache.sha256(f, Hasher(f))
    assert cache.save()
    assert list(json.loads(path.read_text())["entries"]) == [os.path.realpath(f)]  # /x is gone


def test_a_symlink_is_keyed_by_its_target(data: Path, tmp_path: Path) -> None:
    """A Hugging Face cache's snapshot links into blobs/: two links, one file, one digest."""
    blob = tmp_path / "blobs" / "0123abcd"
    blob.parent.mkdir()
    blob.write_bytes(b"shared text\n")
    _age(blob)
    links = [tmp_path / "snap1.txt", tmp_path / "snap2.txt"]
    for link in links:
        link.symlink_to(blob)
    cache = DigestCache.for_data_dir(data)
    compute = Hasher(links[0])
    assert cache.sha256(links[0], compute) == _sha(b"shared text\n")
    assert cache.lookup(links[1]) == _sha(b"shared text\n") == cache.lookup(blob)
    assert cache.sha256(links[1], Hasher(links[1])) == _sha(b"shared text\n")
    assert compute.calls == 1 and len(cache) == 1


def test_only_the_whole_file_of_a_steady_stat_is_recorded(data: Path) -> None:
    f = data / "a.txt"
    f.write_bytes(b"0123456789")
    _age(f)
    cache = DigestCache.for_data_dir(data)
    prefix = cache.sha256(f, lambda: _sha(b"01234"), size=5)  # the caller wants 5 bytes
    assert prefix == _sha(b"01234") and cache.lookup(f) is None

    def changing() -> str:  # the file changes while it is read
        f.write_bytes(b"0123456789abc")
        return _sha(b"0123456789")

    assert cache.sha256(f, changing, size=10) == _sha(b"0123456789")
    assert cache.lookup(f) is None and not cache.save()
    with pytest.raises(FileNotFoundError):  # a missing file: compute's own error
        cache.sha256(data / "gone.txt", Hasher(data / "gone.txt"))


def test_a_save_that_cannot_write_is_ignored(
    data: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    f = data / "a.txt"
    f.write_bytes(b"x")
    _age(f)
    cache = DigestCache.for_data_dir(data)
    cache.sha256(f, Hasher(f))

    def read_only(path: object, text: str) -> None:
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(digest_cache, "atomic_write_text", read_only)
    with caplog.at_level(logging.DEBUG, logger=digest_cache.__name__):
        assert cache.save() is False
    assert "digest cache not saved" in caplog.text
    assert not (data / ".allllm" / "digests.json").exists()


# -- acceptance: an unchanged second tokenize does not read its sources -------------------------

# The issue asks for 10,000 sources of 100 KB. Here (2 cores) their first tokenize alone took
# about 50 s and 6.6 GB of shards (.jsonl + .bin), so 2,000 (about 10 s, .bin only) stand in.
N_SOURCES = 2_000
SOURCE_BYTES = 100_000


def _rchar() -> int:
    with open("/proc/self/io", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs /proc/self/io (Linux)")
def test_an_unchanged_second_tokenize_reads_under_a_tenth_of_the_sources(
    workspace: Path,
) -> None:
    raw = workspace / "data" / "raw"
    raw.mkdir(parents=True)
    lines = b"".join(b"the quick brown fox jumps over the lazy dog %d\n" % k for k in range(2300))
    for i in range(N_SOURCES):
        path = raw / f"s{i:05d}.txt"
        path.write_bytes((b"source %d\n" % i + lines)[:SOURCE_BYTES])
        _age(path)  # not racily clean
    cfg = make_config(formats=["bin"], seq_len=256, pack_below_bytes=1_000_000)
    first = tokenize(cfg)
    assert first.shards and first.up_to_date == []
    stems = shard_stems(cfg.data_dir)
    before = _rchar()
    second = tokenize(cfg)
    read = _rchar() - before
    assert read < 0.1 * N_SOURCES * SOURCE_BYTES, read
    assert len(second.up_to_date) == N_SOURCES and second.shards == []
    assert shard_stems(cfg.data_dir) == stems


# -- training and eval: ScanResult.verify reads a shard file once per version -------------------

L = 16
SPEC = ScanSpec(L, 264, TokenizerIdentity("byte", None, TEST_FINGERPRINT, 264, eos_id=257))


def test_verify_reads_an_unchanged_shard_once_and_still_sees_a_change(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard = write_shard(data, random_rows(5, L, last_row_len=7), seq_len=L)
    for path in shard.files.values():
        _age(path)
    reads: list[str] = []
    real = registry_entries.file_sha256

    def counting(path: Path) -> str:
        reads.append(path.name)
        return real(path)

    monkeypatch.setattr(registry_entries, "file_sha256", counting)
    result = scan_shards(data, SPEC)
    assert result.verify(result.trainable()) == []
    assert reads == [shard.files["bin"].name]  # train never hashes the .jsonl beside a .bin
    reads.clear()
    result = scan_shards(data, SPEC)  # the next run: a new scan, the cache on disk
    assert result.verify(result.trainable()) == [] and reads == []

    b = shard.files["bin"]
    content = bytearray(b.read_bytes())
    content[0] ^= 1  # edited in place: same size, another mtime (not racily clean either)
    b.write_bytes(bytes(content))
    _age(b, HOUR_NS // 2)
    for _ in range(2):  # the cache holds the file's real digest, never meta's
        result = scan_shards(data, SPEC)
        (failed,) = result.verify(result.trainable())
        assert failed.state == "invalid" and failed.reason.startswith("digest mismatch: " + b.name)
    assert reads == [b.name]  # read again once; the second mismatch comes from the cache

    mtime = b.stat().st_mtime_ns
    b.write_bytes(bytes(content) + b"\0\0")  # another size, the same mtime
    os.utime(b, ns=(mtime, mtime))
    result = scan_shards(data, SPEC)
    assert result.verify(result.shards) == result.shards
    assert result.shards[0].state == "invalid"
