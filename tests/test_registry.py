"""The shard registry: pairing, states and reasons of docs/design.md (shards), legacy and hostile files."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from allllm.data.registry import ScanResult, ScanSpec, TokenizerIdentity, scan_shards
from allllm.data.seen import SeenMap, SeenRecord
from allllm.data.shard_format import compute_shard_id
from allllm.data.tokenize.journal import begin
from shard_factory import (
    TEST_FINGERPRINT,
    random_rows,
    tokenizer_info,
    write_legacy_bin,
    write_shard,
)

L = 16  # seq_len of these tests
TOK = TokenizerIdentity("byte", None, TEST_FINGERPRINT, 264, pad_id=None, eos_id=257)
SPEC = ScanSpec(L, 264, TOK)


def scan(data: Path, seen: SeenMap | None = None, spec: ScanSpec = SPEC, **kw: bool) -> ScanResult:
    return scan_shards(data, spec, seen, **kw)


def only(result: ScanResult):
    assert len(result.shards) == 1, [e.name for e in result.shards]
    return result.shards[0]


def record(files: dict[str, str], step: int = 7, rows: int = 3, tokens: int = 48) -> SeenRecord:
    return SeenRecord(
        files=files, rows=rows, tokens=tokens, step=step, run_id="run1",
        completed="2024-07-01T12:00:00Z", val_seed=1337, val_fraction=0.01,
    )  # fmt: skip


def rows(n: int = 3, last: int | None = 9, seed: int = 0) -> list[list[int]]:
    return random_rows(n, L, last_row_len=last, seed=seed)


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


def test_jsonl_and_bin_of_one_stem_are_one_shard(data: Path) -> None:
    shard = write_shard(data, rows(), seq_len=L)
    (data / "notes.txt").write_text("not a shard")
    (data / "raw").mkdir()
    entry = only(scan(data))
    assert entry.state == "new" and entry.reason is None
    assert entry.formats == ["jsonl", "bin"] and entry.read_role == "bin"
    assert entry.shard_id == shard.shard_id
    assert (entry.n_rows, entry.n_tokens, entry.last_row_len) == (3, 2 * L + 9, 9)
    assert scan(data).trainable() == [entry]


def test_renaming_keeps_a_shard_seen(data: Path) -> None:
    shard = write_shard(data, rows(), seq_len=L, source="old")
    seen = SeenMap(
        {shard.shard_id: record({r: p.name for r, p in shard.files.items() if r != "meta"})}
    )
    for path in shard.files.values():
        path.rename(data / path.name.replace("old.cached", "renamed.cached"))
    entry = only(scan(data, seen))
    assert entry.name.startswith("renamed.cached") and entry.state == "seen" and entry.step == 7
    assert scan(data, seen).missing == [] and scan(data, seen).trainable() == []


def test_duplicates_keep_the_oldest_or_the_seen_one(data: Path) -> None:
    same = rows()
    a = write_shard(data, same, seq_len=L, source="a", created="2024-07-02T00:00:00Z")
    b = write_shard(data, same, seq_len=L, source="b", created="2024-07-01T00:00:00Z")
    by_name = {e.name: e for e in scan(data).shards}
    assert by_name[b.stem].state == "new"
    assert by_name[a.stem].state == "duplicate" and by_name[a.stem].duplicate_of == b.stem
    seen = SeenMap({a.shard_id: record({"bin": a.files["bin"].name})})
    by_name = {e.name: e for e in scan(data, seen).shards}
    assert by_name[a.stem].state == "seen"
    assert by_name[b.stem].state == "duplicate"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("seq_len", "seq_len mismatch: shard has 8, the config 16"),
        ("fingerprint", "tokenizer mismatch: made with byte (fingerprint 000000000000)"),
        ("truncated", "truncated: "),
        ("grown", "size mismatch: "),
        ("vocab", "id 263 >= vocab 200"),
        ("broken_json", "meta unreadable: meta is not valid JSON"),
        ("missing_field", "meta unreadable: meta field n_rows: Field required"),
        ("inconsistent", "meta self-inconsistent: n_tokens does not match"),
        ("file_missing", "file listed in meta missing: "),
        ("dtype", "meta self-inconsistent: max_id 70000 does not fit dtype uint16"),
    ],
)
def test_each_invalid_reason(data: Path, case: str, expected: str) -> None:
    spec = SPEC
    if case == "seq_len":
        shard = write_shard(data, random_rows(2, 8), seq_len=8)
    elif case == "fingerprint":
        shard = write_shard(data, rows(), seq_len=L, tokenizer=tokenizer_info(fingerprint="0" * 64))
    elif case == "vocab":
        r = rows()
        r[0][0] = 263
        shard = write_shard(data, r, seq_len=L)
        spec = ScanSpec(L, 200, TOK)
    elif case == "dtype":
        shard = write_shard(data, rows(), seq_len=L, meta_overrides={"max_id": 70000})
    else:
        shard = write_shard(data, rows(), seq_len=L)
    meta = shard.files["meta"]
    if case in ("truncated", "grown"):
        b = shard.files["bin"]
        content = b.read_bytes()
        b.write_bytes(content[:-2] if case == "truncated" else content + b"\0\0")
    elif case == "broken_json":
        meta.write_text(meta.read_text()[:-5])
    elif case == "missing_field":
        d = json.loads(meta.read_text())
        del d["n_rows"]
        meta.write_text(json.dumps(d))
    elif case == "inconsistent":
        d = json.loads(meta.read_text())
        d["n_tokens"] += 1
        meta.write_text(json.dumps(d))
    elif case == "file_missing":
        shard.files["jsonl"].unlink()
    entry = only(scan(data, spec=spec))
    assert entry.state == "invalid"
    assert entry.reason is not None and entry.reason.startswith(expected), entry.reason
    assert scan(data, spec=spec).trainable() == []


def test_unreadable_meta_still_names_its_shard_id_so_it_is_not_missing(data: Path) -> None:
    shard = write_shard(data, rows(), seq_len=L)
    d = json.loads(shard.files["meta"].read_text())
    d["n_rows"] = "three"
    shard.files["meta"].write_text(json.dumps(d))
    seen = SeenMap({shard.shard_id: record({"bin": shard.files["bin"].name})})
    result = scan(data, seen)
    assert only(result).state == "invalid" and only(result).step == 7
    assert result.missing == []


def test_digest_checked_only_with_verify(data: Path) -> None:
    shard = write_shard(data, rows(), seq_len=L)
    b = shard.files["bin"]
    content = bytearray(b.read_bytes())
    content[0] ^= 1  # same size, different bytes
    b.write_bytes(bytes(content))
    assert only(scan(data)).state == "new"
    entry = only(scan(data, verify=True))
    assert entry.state == "invalid" and entry.reason.startswith("digest mismatch: " + b.name)
    result = scan(data)
    assert [e.name for e in result.verify(result.trainable())] == [shard.stem]


def test_tokenizer_that_cannot_be_loaded_is_compared_by_backend_and_path(data: Path) -> None:
    write_shard(data, rows(), seq_len=L, tokenizer=tokenizer_info(backend="hf", path="gpt2"))
    unloaded = TokenizerIdentity("hf", "gpt2", None)
    entry = only(scan(data, spec=ScanSpec(L, 264, unloaded)))
    assert entry.state == "new" and entry.tokenizer_unverified
    other = ScanSpec(L, 264, TokenizerIdentity("hf", "microsoft/phi-2", None))
    entry = only(scan(data, spec=other))
    assert entry.state == "invalid"
    assert (
        entry.reason == "tokenizer mismatch: made with hf:gpt2, the config names hf:microsoft/phi-2"
    )


def test_shard_without_meta_is_unverified_until_trusted(data: Path) -> None:
    r = rows()
    shard = write_shard(data, r, seq_len=L)
    shard.files["meta"].unlink()
    entry = only(scan(data))
    assert entry.state == "unverified" and "no meta file" in entry.reason
    assert entry.shard_id is None and scan(data).trainable() == []
    entry = only(scan(data, trust_unverified=True))
    assert entry.state == "new" and entry.shard_id == shard.shard_id
    assert (entry.n_rows, entry.last_row_len, entry.dtype) == (3, 9, "uint16")
    seen = SeenMap({shard.shard_id: record({"bin": shard.files["bin"].name})})
    assert only(scan(data, seen, trust_unverified=True)).state == "seen"
    untrusted = scan(data, seen)  # not missing: the seen record names its files
    assert untrusted.missing == [] and only(untrusted).step == 7


def test_trusted_raw_bin_must_hold_whole_rows_and_known_ids(data: Path) -> None:
    shard = write_shard(data, rows(last=None), seq_len=L, formats=("bin",), with_meta=False)
    entry = only(scan(data, trust_unverified=True))
    assert entry.state == "new" and entry.shard_id == compute_shard_id(rows(last=None), L)
    b = shard.files["bin"]
    b.write_bytes(b.read_bytes()[:-2])
    entry = only(scan(data, trust_unverified=True))
    assert (
        entry.state == "invalid" and "not a whole number of rows of 16 uint16 ids" in entry.reason
    )
    b.write_bytes(np.full(L, 300, dtype="<u2").tobytes())
    entry = only(scan(data, trust_unverified=True))
    assert entry.state == "invalid" and "id 300 at row 0 outside 0..263" in entry.reason


def test_trusted_jsonl_checks_every_row(data: Path) -> None:
    shard = write_shard(data, rows(), seq_len=L, formats=("jsonl",), with_meta=False)
    path = shard.files["jsonl"]
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "[1, 2]", lines[2]]) + "\n")
    entry = only(scan(data, trust_unverified=True))
    assert entry.state == "invalid" and f"{path}:2: row of 2 ids before the end" in entry.reason
    path.write_text("\n".join([lines[0], '[1, "a"]']) + "\n")
    entry = only(scan(data, trust_unverified=True))
    assert entry.state == "invalid" and f"{path}:2: the row must hold integers only" in entry.reason


def test_superseded_unless_already_seen(data: Path) -> None:
    old = write_shard(data, rows(seed=1), seq_len=L, source="a", timestamp="20240701_000000")
    new = write_shard(
        data, rows(seed=2), seq_len=L, source="a", timestamp="20240801_000000",
        supersedes=[old.shard_id],
    )  # fmt: skip
    by_name = {e.name: e for e in scan(data).shards}
    assert by_name[old.stem].state == "superseded" and by_name[old.stem].superseded_by == new.stem
    assert by_name[new.stem].state == "new"
    assert [e.name for e in scan(data).trainable()] == [new.stem]
    seen = SeenMap({old.shard_id: record({"bin": old.files["bin"].name})})
    assert {e.name: e.state for e in scan(data, seen).shards}[old.stem] == "seen"


def test_seen_shard_whose_files_are_gone_is_missing(data: Path) -> None:
    gone = "ab" * 32
    seen = SeenMap({gone: record({"bin": "x.cached.16.20240701_000000.bin"}, step=3)})
    result = scan(data, seen)
    assert result.shards == [] and len(result.missing) == 1
    m = result.missing[0]
    assert (m.state, m.shard_id, m.step, m.name) == (
        "missing",
        gone,
        3,
        "x.cached.16.20240701_000000",
    )
    assert scan(data.parent / "no-such-dir", seen).missing[0].shard_id == gone


def test_journaled_stems_are_not_shards(data: Path) -> None:
    shard = write_shard(data, rows(), seq_len=L)
    begin(data, shard.stem, [p.name for p in shard.files.values()])
    result = scan(data)
    assert result.shards == [] and result.journaled == [shard.stem]


def test_eval_shards_keep_their_state_but_are_never_trainable(data: Path) -> None:
    ev = write_shard(data, rows(seed=1), seq_len=L, source="heldout")
    tr = write_shard(data, rows(seed=2), seq_len=L, source="train")
    spec = ScanSpec(L, 264, TOK, eval_glob="heldout.*")
    result = scan(data, spec=spec)
    by_name = {e.name: e for e in result.shards}
    assert by_name[ev.stem].state == "new" and by_name[ev.stem].eval_only
    assert not by_name[tr.stem].eval_only
    assert [e.name for e in result.trainable(only_new=False)] == [tr.stem]
    assert [e.name for e in result.eval_shards()] == [ev.stem]


def test_data_file_not_listed_in_meta_is_ignored(data: Path) -> None:
    shard = write_shard(data, rows(), seq_len=L, formats=("bin",))
    stray = data / f"{shard.stem}.jsonl"
    stray.write_text("[1]\n")
    entry = only(scan(data))
    assert entry.state == "new" and entry.formats == ["bin"] and entry.unlisted == [stray.name]


# -- legacy torch.save shards -------------------------------------------------------------------


def test_legacy_torch_save_bin_is_read_when_trusted(data: Path) -> None:
    torch = pytest.importorskip("torch")
    stream = torch.arange(2 * L + 5, dtype=torch.int64) % 250
    write_legacy_bin(data / "seed.cached.16.20240101_000000.bin", stream)
    entry = only(scan(data))
    assert entry.state == "unverified" and entry.legacy and "legacy torch.save" in entry.reason
    entry = only(scan(data, trust_unverified=True))
    assert entry.state == "new" and (entry.n_rows, entry.last_row_len) == (3, 5)
    expected = [stream[i : i + L].tolist() for i in range(0, stream.numel(), L)]
    assert entry.shard_id == compute_shard_id(expected, L)


@pytest.mark.parametrize(
    ("tensor", "reason"),
    [
        ("float", "dtype torch.float32, not an integer dtype"),
        ("wide", "seq_len mismatch: legacy rows hold 8 ids"),
        ("dict", "holds a dict, not a tensor"),
        ("3d", "expected a 1-D stream or 2-D [rows, seq_len]"),
    ],
)
def test_legacy_anything_but_a_plain_integer_tensor_is_refused(
    data: Path, tensor: str, reason: str
) -> None:
    torch = pytest.importorskip("torch")
    obj = {
        "float": torch.zeros(L),
        "wide": torch.zeros(2, 8, dtype=torch.int64),
        "dict": {"ids": torch.zeros(L, dtype=torch.int64)},
        "3d": torch.zeros(1, 2, L, dtype=torch.int64),
    }[tensor]
    write_legacy_bin(data / "seed.cached.16.20240101_000000.bin", obj)
    entry = only(scan(data, trust_unverified=True))
    assert entry.state == "invalid" and reason in entry.reason


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_never_runs(data: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    marker = tmp_path / "PWNED"
    genuine = tmp_path / "genuine.bin"
    torch.save(torch.arange(L), genuine)
    hostile = data / "evil.cached.16.20240101_000000.bin"
    with zipfile.ZipFile(genuine) as zin, zipfile.ZipFile(hostile, "w") as zout:
        for name in zin.namelist():  # a real torch.save layout whose data.pkl calls os.system
            payload = (
                pickle.dumps(_Exploit(marker), protocol=2) if name.endswith("data.pkl") else None
            )
            zout.writestr(name, payload if payload is not None else zin.read(name))
    assert only(scan(data)).state == "unverified"  # a plain scan never opens it
    entry = only(scan(data, trust_unverified=True))
    assert entry.state == "invalid"
    assert "refused" in entry.reason and "system" in entry.reason
    assert not marker.exists()
