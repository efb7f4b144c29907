"""Write valid shards (docs/design.md: shards, exactly per ``allllm.data.shard_format``) from token rows.

Tests and benchmarks build shards with this instead of running the tokenize
pipeline: give it rows of ids and it writes ``<stem>.jsonl`` / ``<stem>.bin`` and
``<stem>.meta.json`` with correct sizes, digests and ``shard_id``. Keyword
overrides produce broken shards on purpose (a wrong ``seq_len`` in meta, a
truncated ``.bin``, ...). Also writes the seed's legacy ``torch.save`` ``.bin``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from allllm.data.shard_format import (
    FORMAT_VERSION,
    ShardMeta,
    bin_dtype_for,
    compute_shard_id,
    meta_to_dict,
    numpy_dtype,
    shard_file,
    unique_stem,
    write_meta,
)
from allllm.data.tokenize.jsonl_render import rows_to_jsonl
from allllm.util.clock import utc_iso

TEST_FINGERPRINT = "f" * 64


def tokenizer_info(
    *,
    backend: str = "byte",
    path: str | None = None,
    fingerprint: str = TEST_FINGERPRINT,
    vocab_size: int = 264,
    bos_id: int | None = 256,
    eos_id: int | None = 257,
    pad_id: int | None = None,
) -> dict[str, Any]:
    """A meta ``tokenizer`` record (defaults: a byte-level tokenizer with 264 ids)."""
    return {
        "backend": backend,
        "path": path,
        "fingerprint": fingerprint,
        "vocab_size": vocab_size,
        "bos_id": bos_id,
        "eos_id": eos_id,
        "pad_id": pad_id,
    }


def byte_tokenizer_info() -> dict[str, Any]:
    """The meta ``tokenizer`` record of allllm's real byte tokenizer (what tokenize would write)."""
    from allllm.config import TokenizerConfig
    from allllm.tokenizer.manager import TokenizerManager

    info = TokenizerManager.from_config(TokenizerConfig(backend="byte")).describe()
    return tokenizer_info(
        backend=info["backend"],
        path=info["path"],
        fingerprint=info["fingerprint"],
        vocab_size=info["vocab_size"],
        bos_id=info["bos_id"],
        eos_id=info["eos_id"],
        pad_id=info["pad_id"],
    )


@dataclass(frozen=True)
class WrittenShard:
    stem: str
    shard_id: str
    meta: ShardMeta | None
    files: dict[str, Path]  # role -> path (jsonl, bin, meta)


def random_rows(
    n_rows: int, seq_len: int, *, last_row_len: int | None = None, vocab: int = 256, seed: int = 0
) -> list[list[int]]:
    """``n_rows`` rows of random ids; all full except the final one (``last_row_len``)."""
    rng = np.random.default_rng(seed)
    rows = [rng.integers(0, vocab, seq_len).tolist() for _ in range(n_rows)]
    if n_rows and last_row_len is not None:
        rows[-1] = rows[-1][:last_row_len]
    return rows


def _write(path: Path, data: bytes, durable: bool) -> None:
    if durable:
        from allllm.util.atomic import atomic_write_bytes

        atomic_write_bytes(path, data)
    else:
        path.write_bytes(data)


def bin_bytes(rows: Sequence[Sequence[int]], seq_len: int, dtype: str, pad_id: int) -> bytes:
    """Rows as a shard's ``.bin`` bytes: little-endian, the final row padded with ``pad_id``."""
    arr = np.full((len(rows), seq_len), pad_id, dtype=numpy_dtype(dtype))
    for i, row in enumerate(rows):
        arr[i, : len(row)] = row
    return arr.tobytes()


def jsonl_bytes(rows: Sequence[Sequence[int]], id_range: int) -> bytes:
    """Rows as tokenize renders them (fixed width, ``[  464, 1049,50256]``: plain JSON)."""
    if any(len(r) and (min(r) < 0 or max(r) >= id_range) for r in rows):  # deliberately bad ids
        return "".join(json.dumps(list(map(int, r))) + "\n" for r in rows).encode()
    if rows and all(len(r) == len(rows[0]) for r in rows):
        return rows_to_jsonl(np.asarray(rows, dtype=np.int64).reshape(len(rows), -1), id_range)
    return b"".join(rows_to_jsonl(np.asarray([r], dtype=np.int64), id_range) for r in rows)


def write_shard(
    data_dir: Path,
    rows: Sequence[Sequence[int]],
    *,
    seq_len: int,
    source: str = "src",
    timestamp: str = "20240701_101512",
    stem: str | None = None,
    formats: Sequence[str] = ("jsonl", "bin"),
    tokenizer: dict[str, Any] | None = None,
    created: str | None = None,
    supersedes: Sequence[str] = (),
    with_meta: bool = True,
    durable: bool = True,
    meta_overrides: dict[str, Any] | None = None,
) -> WrittenShard:
    """Write one shard of ``rows`` into ``data_dir``; returns its stem, id, meta and paths."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tok = tokenizer or tokenizer_info()
    dtype = bin_dtype_for(tok["vocab_size"])
    pad = tok["pad_id"] if tok["pad_id"] is not None else (tok["eos_id"] or 0)
    stem = stem or unique_stem(data_dir, source, seq_len, timestamp)
    shard_id = compute_shard_id(rows, seq_len)
    paths: dict[str, Path] = {}
    file_infos: dict[str, dict[str, Any]] = {}
    for role in formats:
        if role == "jsonl":
            data = jsonl_bytes(rows, tok["vocab_size"])
        else:
            data = bin_bytes(rows, seq_len, dtype, pad)
        path = shard_file(data_dir, stem, role)
        _write(path, data, durable)
        paths[role] = path
        file_infos[role] = {
            "name": path.name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
    n_rows = len(rows)
    meta = None
    if with_meta:
        fields: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "shard_id": shard_id,
            "seq_len": seq_len,
            "dtype": dtype,
            "n_rows": n_rows,
            "n_tokens": sum(len(r) for r in rows),
            "last_row_len": len(rows[-1]) if rows else 0,
            "max_id": max((max(r) for r in rows if len(r)), default=-1),
            "tokenizer": tok,
            "document_boundary": "file",
            "sources": [
                {
                    "path": f"data/raw/{source}.txt",
                    "size": 1,
                    "sha256": "0" * 64,
                    "byte_range": [0, 1],
                }
            ],
            "files": file_infos,
            "created": created or utc_iso(),
            "supersedes": list(supersedes),
        }
        fields.update(meta_overrides or {})
        meta = ShardMeta.model_validate(fields)
        meta_path = shard_file(data_dir, stem, "meta")
        if durable:
            write_meta(meta_path, meta)
        else:
            meta_path.write_text(json.dumps(meta_to_dict(meta), indent=2) + "\n")
        paths["meta"] = meta_path
    return WrittenShard(stem=stem, shard_id=shard_id, meta=meta, files=paths)


def write_legacy_bin(path: Path, tensor: Any) -> Path:
    """The seed's legacy format: a ``torch.save``'d tensor in a ``.bin`` without meta."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensor, path)
    return path
