"""Reading ``.jsonl`` shard rows: one validated row from its bytes, and the file's line index.

Shared by the dataset (which reads rows at random through a cached index) and
by the check of legacy and meta-less shards (which streams them); the writer's
side is :mod:`allllm.data.tokenize.jsonl_render`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from allllm.errors import DataError

INDEX_CHUNK = 8 << 20  # bytes scanned at a time while indexing a .jsonl (tests make it small)


def parse_jsonl_row(line: bytes, *, where: str, seq_len: int, vocab_limit: int) -> np.ndarray:
    """One ``.jsonl`` row as int64 ids, validated; DataError naming ``where`` (file:line) if bad."""
    hint = "re-tokenize the shard's source with `allllm tokenize`"
    try:
        ids = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise DataError(f"{where}: not valid JSON", hint) from None
    if not isinstance(ids, list) or not ids:
        raise DataError(f"{where}: expected a non-empty JSON list of token ids", hint)
    arr = np.array(ids)
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or b"true" in line or b"false" in line:
        raise DataError(f"{where}: the row must hold integers only", hint)
    arr = arr.astype(np.int64, copy=False)
    if arr.size > seq_len:
        raise DataError(f"{where}: {arr.size} ids, more than seq_len {seq_len}", hint)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab_limit:
        bad = lo if lo < 0 else hi
        raise DataError(
            f"{where}: id {bad} outside 0..{vocab_limit - 1} (vocab {vocab_limit})", hint
        )
    return arr


def build_line_index(path: Path, chunk: int | None = None) -> np.ndarray:
    """Byte offsets of every line start plus the file size (uint64), scanning in bounded chunks."""
    chunk = chunk or INDEX_CHUNK
    starts = [np.zeros(1, dtype=np.uint64)]
    pos = 0
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            nl = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
            starts.append((nl + 1 + pos).astype(np.uint64))
            pos += len(block)
    offsets = np.concatenate(starts)
    if offsets[-1] != pos:  # no newline at the end: the last line runs to the end of the file
        offsets = np.append(offsets, np.uint64(pos))
    return offsets
