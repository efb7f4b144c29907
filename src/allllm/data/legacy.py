"""The seed's legacy shards: a ``torch.save``'d tensor in a ``.bin`` without meta (docs/design.md: shards).

Such a file is a zip archive holding a pickle. It is read only with
``torch.load(weights_only=True, mmap=True)``: the restricted unpickler refuses
every global that is not a tensor building block, so a crafted file can never
run code, and ``mmap`` keeps a large tensor on disk until rows are read.
Anything but a plain, contiguous integer tensor — 1-D (a token stream cut
into rows of ``seq_len``) or 2-D ``[rows, seq_len]`` — is refused with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from allllm.errors import DataError

ZIP_MAGIC = b"PK\x03\x04"


def is_torch_save(path: Path) -> bool:
    """True if the file starts with the zip magic ``torch.save`` writes (raw shards never do*).

    (*) A raw uint16 ``.bin`` starting with ids 19280, 1027 would look the same; a meta file
    settles it, and legacy detection is only used for ``.bin`` files without one.
    """
    try:
        with path.open("rb") as fh:
            return fh.read(4) == ZIP_MAGIC
    except OSError:
        return False


@dataclass(frozen=True)
class LegacyTensor:
    """A legacy shard's ids as a flat numpy view (memory-mapped) and its row layout."""

    flat: np.ndarray  # 1-D integer array over all stored ids
    n_rows: int
    last_row_len: int
    layout: str  # "stream" (1-D) or "rows" (2-D)

    @property
    def n_tokens(self) -> int:
        return int(self.flat.size)


def _load_weights_only(path: Path) -> Any:
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True, mmap=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        # torch explains weights_only at length; keep the line naming the refused global
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        default = lines[-1] if lines else type(exc).__name__
        detail = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), default)
        raise DataError(
            f"{path}: legacy torch.save file refused: it holds objects other than a tensor "
            f"({detail[:160]})",
            "it was not loaded and nothing in it ran; re-tokenize its source with `allllm tokenize`",
        ) from None
    except Exception as exc:  # the zip reader or storage layer: a damaged file
        first = str(exc).strip().split(". ")[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{path}: legacy torch.save file unreadable ({type(exc).__name__}: {first[:160]})",
            "re-tokenize its source with `allllm tokenize`",
        ) from None


def load_legacy(path: Path, seq_len: int) -> LegacyTensor:
    """Open a legacy ``.bin`` safely and describe its rows; DataError with the reason otherwise."""
    import torch

    obj = _load_weights_only(path)
    if not isinstance(obj, torch.Tensor):
        raise DataError(
            f"{path}: legacy file holds a {type(obj).__name__}, not a tensor of token ids",
            "re-tokenize its source with `allllm tokenize`",
        )
    if obj.is_floating_point() or obj.is_complex() or obj.dtype == torch.bool:
        raise DataError(
            f"{path}: legacy tensor has dtype {obj.dtype}, not an integer dtype",
            "re-tokenize its source with `allllm tokenize`",
        )
    if obj.dim() not in (1, 2):
        raise DataError(
            f"{path}: legacy tensor has shape {tuple(obj.shape)}; expected a 1-D stream or "
            "2-D [rows, seq_len]",
            "re-tokenize its source with `allllm tokenize`",
        )
    if not obj.is_contiguous():
        raise DataError(
            f"{path}: legacy tensor is not contiguous",
            "re-tokenize its source with `allllm tokenize`",
        )
    if obj.dim() == 2 and obj.shape[0] and obj.shape[1] != seq_len:
        raise DataError(
            f"{path}: seq_len mismatch: legacy rows hold {obj.shape[1]} ids, the config's seq_len "
            f"is {seq_len}",
            "use a config with that seq_len or re-tokenize the source",
        )
    try:
        flat = obj.reshape(-1).numpy()
    except (TypeError, RuntimeError) as exc:
        raise DataError(f"{path}: legacy tensor dtype {obj.dtype} unreadable: {exc}") from None
    n = int(flat.size)
    n_rows = -(-n // seq_len)
    last = n - (n_rows - 1) * seq_len if n_rows else 0
    return LegacyTensor(flat, n_rows, last, "stream" if obj.dim() == 1 else "rows")


# -- checking a shard without meta (``--trust-unverified``) -------------------------------------


@dataclass(frozen=True)
class UnverifiedContent:
    """What reading every row of a meta-less shard established."""

    shard_id: str
    n_rows: int
    n_tokens: int
    last_row_len: int
    dtype: str | None  # a raw .bin's dtype; None for jsonl-only and legacy shards


_BLOCK_ROWS = 4096  # rows checked and hashed at a time


def _jsonl_summary(path: Path, seq_len: int, vocab_limit: int) -> tuple[str, int, int, int]:
    from allllm.data.jsonl_rows import parse_jsonl_row
    from allllm.data.shard_format import ShardIdHasher

    hasher, n_rows, n_tokens, prev_len = ShardIdHasher(), 0, 0, seq_len
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if prev_len != seq_len:
                raise DataError(
                    f"{path}:{lineno - 1}: row of {prev_len} ids before the end; only the final row "
                    f"may be shorter than seq_len {seq_len}",
                    "re-tokenize its source with `allllm tokenize`",
                )
            ids = parse_jsonl_row(
                line, where=f"{path}:{lineno}", seq_len=seq_len, vocab_limit=vocab_limit
            )
            hasher.update(ids)
            n_rows, n_tokens, prev_len = n_rows + 1, n_tokens + ids.size, ids.size
    return hasher.hexdigest(seq_len), n_rows, n_tokens, (prev_len if n_rows else 0)


def _flat_ids(
    bin_path: Path, is_legacy: bool, seq_len: int, id_range: int
) -> tuple[np.ndarray, str | None]:
    if is_legacy:
        return load_legacy(bin_path, seq_len).flat, None
    from allllm.data.shard_format import bin_dtype_for, numpy_dtype

    dtype_name = bin_dtype_for(id_range)
    dtype = numpy_dtype(dtype_name)
    size = bin_path.stat().st_size
    if size % (seq_len * dtype.itemsize):
        raise DataError(
            f"{bin_path}: {size} bytes is not a whole number of rows of {seq_len} {dtype_name} ids",
            "the file is truncated or was written with another seq_len or dtype",
        )
    flat = np.memmap(bin_path, dtype=dtype, mode="r") if size else np.zeros(0, dtype)
    return flat, dtype_name


def check_unverified(
    *,
    jsonl: Path | None,
    bin_path: Path | None,
    is_legacy: bool,
    seq_len: int,
    vocab_limit: int,
    id_range: int,
) -> UnverifiedContent:
    """Read all rows of a meta-less shard: lengths <= seq_len, ids in 0..vocab_limit-1, shard_id.

    A raw ``.bin`` uses the dtype the tokenizer's ``id_range`` implies and holds whole rows;
    without a ``.jsonl`` to tell where its final row ends, every row counts as full. When a
    ``.jsonl`` and a ``.bin`` share the stem, both must hold the same ids.
    """
    from allllm.data.shard_format import ShardIdHasher

    summary = _jsonl_summary(jsonl, seq_len, vocab_limit) if jsonl is not None else None
    if bin_path is None:
        assert summary is not None
        return UnverifiedContent(*summary, dtype=None)
    flat, dtype_name = _flat_ids(bin_path, is_legacy, seq_len, id_range)
    n_rows = -(-flat.size // seq_len)
    last = flat.size - (n_rows - 1) * seq_len if n_rows else 0
    if summary is not None:
        if summary[1] != n_rows:
            raise DataError(
                f"{bin_path}: {n_rows} rows, but {jsonl} holds {summary[1]}",
                "the .bin and .jsonl of one stem must hold the same rows; delete the wrong one",
            )
        last = summary[3]
    n_tokens = (n_rows - 1) * seq_len + last if n_rows else 0
    hasher = ShardIdHasher()
    step = _BLOCK_ROWS * seq_len
    for lo in range(0, n_tokens, step):
        block = np.asarray(flat[lo : min(lo + step, n_tokens)])
        lo_id, hi_id = int(block.min()), int(block.max())
        if lo_id < 0 or hi_id >= vocab_limit:
            bad = lo_id if lo_id < 0 else hi_id
            pos = lo + int(np.flatnonzero(block == bad)[0])
            raise DataError(
                f"{bin_path}: id {bad} at row {pos // seq_len} outside 0..{vocab_limit - 1}",
                "the file was made with another tokenizer or dtype; re-tokenize its source",
            )
        hasher.update(block)
    shard_id = hasher.hexdigest(seq_len)
    if summary is not None and summary[0] != shard_id:
        raise DataError(
            f"{bin_path} and {jsonl.name if jsonl else ''} hold different ids",
            "the .bin and .jsonl of one stem must hold the same rows; delete the wrong one",
        )
    return UnverifiedContent(shard_id, n_rows, n_tokens, last, dtype_name)
