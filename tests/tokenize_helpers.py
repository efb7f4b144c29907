"""Shared helpers of the tokenize tests: workspaces, real text, and a full check of a written shard.

``check_shard`` validates every field docs/design.md gives a shard against the files on
disk (digests, sizes, ``shard_id`` recomputed from the rows, ``.jsonl`` rows equal
to the unpadded ``.bin`` rows, dtype, padding) and returns the token stream, so a test
can compare it with encoding each document whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from allllm import __version__
from allllm.config import Config, TokenizerConfig, parse_config
from allllm.data.raw import iter_documents, resolve_sources
from allllm.data.registry import ScanResult, ScanSpec, TokenizerIdentity, scan_shards
from allllm.data.shard_format import (
    FORMAT_VERSION,
    ShardMeta,
    bin_dtype_for,
    compute_shard_id,
    numpy_dtype,
    read_meta,
    shard_file,
)
from allllm.tokenizer.manager import TokenizerManager

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE_DIR = REPO.parent / "shared" / "corpus" / "shakespeare"

MODEL = {
    "arch": "phi",
    "vocab_size": 264,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_layers": 1,
    "num_heads": 2,
    "max_position_embeddings": 256,
    "partial_rotary_factor": 0.5,
}


def make_config(
    tokenizer: TokenizerConfig | dict[str, Any] | None = None,
    *,
    vocab_size: int | None = None,
    **data: Any,
) -> Config:
    """A config for the current directory: raw text in data/raw, shards in data/.

    ``vocab_size`` defaults to the tokenizer's id range rounded up to 64.
    """
    tok = (
        tokenizer if isinstance(tokenizer, dict) else (tokenizer or TokenizerConfig()).model_dump()
    )
    if vocab_size is None:
        ids = TokenizerManager.from_config(TokenizerConfig(**tok)).vocab_size
        vocab_size = -(-ids // 64) * 64
    data_cfg = {"raw_path": "data/raw", "dir": "data", "seq_len": 64, "pack_below_bytes": 0}
    data_cfg.update(data)
    raw = {
        "name": "t",
        "model": {**MODEL, "vocab_size": vocab_size},
        "tokenizer": tok,
        "data": data_cfg,
    }
    return parse_config(raw, "test")


def write_raw(name: str, text: str | bytes, root: Path | None = None) -> Path:
    """``data/raw/<name>`` (relative to the current directory unless ``root``)."""
    path = (root or Path.cwd()) / "data" / "raw" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


def real_text(n_chars: int, *, start: int = 0) -> str:
    """Real prose: the Shakespeare corpus when present (it is beside the repo in CI), else
    the generated multi-line text of conftest, cut to about ``n_chars`` at a line end."""
    files = sorted(SHAKESPEARE_DIR.glob("*.txt")) if SHAKESPEARE_DIR.is_dir() else []
    if files:
        text = files[start % len(files)].read_text(encoding="utf-8")
        offset = (start * 7919) % max(1, len(text) - n_chars)
        text = text[offset : offset + n_chars]
    else:
        from conftest import generated_text

        text = generated_text(max(1, n_chars // 60), seed=start)[:n_chars]
    return text[: text.rfind("\n") + 1] or text


@dataclass
class CheckedShard:
    stem: str
    meta: ShardMeta
    rows: list[np.ndarray]

    @property
    def ids(self) -> np.ndarray:
        return np.concatenate(self.rows) if self.rows else np.empty(0, np.int64)


def shard_stems(data_dir: Path) -> list[str]:
    """Stems with a meta file (complete shards), sorted."""
    return sorted(p.name.removesuffix(".meta.json") for p in data_dir.glob("*.meta.json"))


def _sha(path: Path, limit: int | None = None) -> str:
    data = path.read_bytes()
    return hashlib.sha256(data if limit is None else data[:limit]).hexdigest()


def check_shard(data_dir: Path, stem: str, cfg: Config, tok: TokenizerManager) -> CheckedShard:
    """Validate one shard against docs/design.md (shards) and return its rows."""
    meta = read_meta(shard_file(data_dir, stem, "meta"))
    seq_len = cfg.data.seq_len
    assert meta.format_version == FORMAT_VERSION
    assert meta.seq_len == seq_len
    assert meta.dtype == bin_dtype_for(tok.vocab_size)
    assert meta.document_boundary == cfg.data.document_boundary
    assert meta.add_bos == cfg.tokenizer.add_bos and meta.add_eos == cfg.tokenizer.add_eos
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta.created)
    assert meta.allllm_version == __version__
    info = meta.tokenizer
    assert (info.backend, info.path) == (cfg.tokenizer.backend, cfg.tokenizer.path)
    assert info.fingerprint == tok.fingerprint and info.vocab_size == tok.vocab_size
    assert (info.bos_id, info.eos_id, info.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    # files: exactly the configured formats, names, sizes and digests as on disk
    assert set(meta.files) <= {"jsonl", "bin"} and meta.files
    for role, f in meta.files.items():
        path = data_dir / f.name
        assert f.name == shard_file(data_dir, stem, role).name
        assert path.stat().st_size == f.size
        assert _sha(path) == f.sha256
    rows: list[np.ndarray] | None = None
    if "jsonl" in meta.files:
        lines = (data_dir / meta.files["jsonl"].name).read_text(encoding="ascii").splitlines()
        rows = [np.asarray(json.loads(line), dtype=np.int64) for line in lines]
    if "bin" in meta.files:
        flat = np.fromfile(data_dir / meta.files["bin"].name, dtype=numpy_dtype(meta.dtype))
        assert flat.size == meta.n_rows * seq_len
        grid = flat.reshape(meta.n_rows, seq_len).astype(np.int64)
        lens = [seq_len] * meta.n_rows
        if meta.n_rows:
            lens[-1] = meta.last_row_len
            pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
            assert (grid[-1, meta.last_row_len :] == pad).all()
        bin_rows = [grid[i, :n] for i, n in enumerate(lens)]
        if rows is not None:  # .jsonl rows == .bin rows (unpadded)
            assert len(rows) == len(bin_rows)
            assert all(np.array_equal(a, b) for a, b in zip(rows, bin_rows))
        rows = bin_rows
    assert rows is not None
    assert meta.n_rows == len(rows) > 0
    assert all(len(r) == seq_len for r in rows[:-1]) and 1 <= len(rows[-1]) <= seq_len
    assert meta.last_row_len == len(rows[-1])
    assert meta.n_tokens == sum(len(r) for r in rows)
    assert meta.max_id == max(int(r.max()) for r in rows) < cfg.model.vocab_size
    assert meta.shard_id == compute_shard_id(rows, seq_len)
    # sources: as found now (tests check right after tokenize), paths relative to the cwd
    for s in meta.sources:
        path = Path(s.path)
        assert path.is_absolute() == (not Path(os.path.abspath(path)).is_relative_to(Path.cwd()))
        assert s.size == path.stat().st_size
        assert s.sha256 == _sha(path, s.size)
        assert 0 <= s.byte_range[0] < s.byte_range[1] <= s.size
    return CheckedShard(stem, meta, rows)


def check_all(data_dir: Path, cfg: Config, tok: TokenizerManager) -> list[CheckedShard]:
    return [check_shard(data_dir, stem, cfg, tok) for stem in shard_stems(data_dir)]


def documents(path: Path, cfg: Config, start: int = 0, end: int | None = None) -> list[str]:
    """The documents the raw reader finds in ``path`` (or its byte range)."""
    (source,) = resolve_sources([str(path)])
    return list(
        iter_documents(
            source,
            boundary=cfg.data.document_boundary,
            text_field=cfg.data.text_field,
            start=start,
            end=end,
        )
    )


def whole_document_ids(docs: Iterable[str], tok: TokenizerManager, cfg: Config) -> np.ndarray:
    """Each document encoded whole with the backend, BOS/EOS added as the config asks."""
    bos, eos = tok.special_ids_for_document()
    out: list[int] = []
    for doc in docs:
        out += ([bos] if bos is not None else []) + tok.backend.encode(doc)
        out += [eos] if eos is not None else []
    return np.asarray(out, dtype=np.int64)


def part_ids(
    docs: list[str], tok: TokenizerManager, cfg: Config, inside: tuple[bool, bool]
) -> np.ndarray:
    """``whole_document_ids`` of a byte range that may start / end inside a document (meta
    ``inside_document``): no BOS before its first document then, no EOS after its last."""
    bos, eos = tok.special_ids_for_document()
    out: list[int] = []
    for k, doc in enumerate(docs):
        out += [bos] if bos is not None and not (k == 0 and inside[0]) else []
        out += tok.backend.encode(doc)
        out += [eos] if eos is not None and not (k == len(docs) - 1 and inside[1]) else []
    return np.asarray(out, dtype=np.int64)


def spec_for(cfg: Config, tok: TokenizerManager) -> ScanSpec:
    return ScanSpec.from_config(cfg, TokenizerIdentity.from_description(tok.describe()))


def scan(cfg: Config, tok: TokenizerManager) -> ScanResult:
    return scan_shards(cfg.data_dir, spec_for(cfg, tok))


def states(cfg: Config, tok: TokenizerManager) -> dict[str, str]:
    """stem -> registry state."""
    return {e.name: e.state for e in scan(cfg, tok).shards}


def snapshot(folder: Path) -> dict[str, str]:
    """name -> sha256 of every file directly in ``folder`` (to prove files were untouched)."""
    return {p.name: _sha(p) for p in sorted(folder.iterdir()) if p.is_file()}


def spy_on_encoder(monkeypatch: Any) -> list[str]:
    """Make ``tokenize`` record every text it hands the backend, in stream order."""
    from allllm.data.tokenize import jobs as tokenize_module
    from allllm.data.tokenize.encode import StreamEncoder

    texts: list[str] = []

    class Spy(StreamEncoder):
        def _batches(self, feed: Any) -> Any:
            for batch in super()._batches(feed):
                texts.extend(batch.texts)
                yield batch

    monkeypatch.setattr(tokenize_module, "StreamEncoder", Spy)
    return texts
