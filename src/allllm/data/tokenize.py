"""``allllm tokenize``: raw text → cached shards, streaming, parallel, incremental, atomic.

The flow: resolve the raw sources, take the data dir's tokenize lock, remove
what a crashed run left (journaled files only), plan which sources need work
(``tokenize_plan``), then for each shard stream the sources' documents through
the tokenizer (``encode_stream``) into a ``ShardWriter`` that packs rows and
writes ``.jsonl`` / ``.bin`` and the meta last. torch is never imported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from allllm.config import Config
from allllm.data import journal
from allllm.data.encode_stream import StreamEncoder
from allllm.data.shard_writer import ShardWriter
from allllm.data.shards import TokenizerInfo, bin_dtype_for, unique_stem, utc_timestamp
from allllm.data.tokenize_plan import (
    Settings,
    ShardJob,
    display_path,
    existing_shards,
    plan_tokenize,
)
from allllm.errors import DataError


class TokenizeProgress(Protocol):
    """What the pipeline reports while it works (the CLI draws a progress bar from it)."""

    def begin(self, total_bytes: int, n_shards: int) -> None: ...
    def begin_shard(self, name: str, nbytes: int) -> None: ...
    def advance(self, nbytes: int, ntokens: int) -> None: ...
    def end_shard(self) -> None: ...
    def end(self) -> None: ...


class _NoProgress:
    def begin(self, total_bytes: int, n_shards: int) -> None:
        pass

    def begin_shard(self, name: str, nbytes: int) -> None:
        pass

    def advance(self, nbytes: int, ntokens: int) -> None:
        pass

    def end_shard(self) -> None:
        pass

    def end(self) -> None:
        pass


@dataclass
class ShardSummary:
    stem: str
    shard_id: str
    sources: list[str]
    why: list[str]
    documents: int
    tokens: int
    rows: int
    files: list[str]


@dataclass
class TokenizeSummary:
    """What one ``allllm tokenize`` did (``--json`` prints ``to_dict()``)."""

    sources: int = 0
    up_to_date: list[str] = field(default_factory=list)
    shards: list[ShardSummary] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0

    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.shards)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            documents=self.documents,
            tokens=self.tokens,
            rows=self.rows,
            mb_per_s=self.bytes / 1e6 / self.seconds if self.seconds else None,
        )
        return data


def _ensure_writable_dir(data_dir: Path) -> None:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create data dir {data_dir}: {exc.strerror}",
            "fix data.dir in the config or the folder's permissions",
        ) from None
    if not data_dir.is_dir():
        raise DataError(f"data.dir {data_dir} is not a directory", "point data.dir at a folder")
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise DataError(
            f"data dir {data_dir} is not writable", "fix its permissions or choose another data.dir"
        )


def tokenize(
    cfg: Config,
    *,
    inputs: list[str] | None = None,
    force: bool = False,
    extra_formats: list[str] | None = None,
    progress: TokenizeProgress | None = None,
    warn: Callable[[str], None] | None = None,
    num_threads: int | None = None,
    chunk_bytes: int = 1 << 20,
    segment_chars: int = 16_384,
    batch_chars: int = 2_000_000,
    max_document_chars: int = 64 << 20,
) -> TokenizeSummary:
    """Tokenize the config's raw text (or ``inputs``) into shards in ``data.dir``.

    Sources already tokenized with the same settings are skipped ("up to date");
    appended text gets a shard of only the new bytes; changed sources are redone
    and their old shards superseded. ``force`` redoes everything.
    """
    from allllm.data.raw import iter_pieces, resolve_sources, source_identity, source_sha256
    from allllm.tokenizer.manager import TokenizerManager

    started = time.perf_counter()
    progress = progress or _NoProgress()
    summary = TokenizeSummary()

    def _warn(message: str) -> None:
        summary.warnings.append(message)
        if warn:
            warn(message)

    data_cfg = cfg.data
    formats = list(dict.fromkeys([*data_cfg.formats, *(extra_formats or [])]))
    data_dir = cfg.data_dir
    tok = TokenizerManager.from_config(cfg.tokenizer, num_threads=num_threads)
    tok.check_vocab(cfg.model.vocab_size)
    bos_id, eos_id = tok.special_ids_for_document()
    sources = resolve_sources(inputs or data_cfg.raw_paths, warn=_warn)
    summary.sources = len(sources)
    _ensure_writable_dir(data_dir)
    settings = Settings(
        fingerprint=tok.fingerprint,
        seq_len=data_cfg.seq_len,
        document_boundary=data_cfg.document_boundary,
        add_bos=cfg.tokenizer.add_bos,
        add_eos=cfg.tokenizer.add_eos,
        text_field=data_cfg.text_field,
    )
    tok_info = TokenizerInfo(
        backend=cfg.tokenizer.backend,
        path=cfg.tokenizer.path,
        fingerprint=tok.fingerprint,
        vocab_size=tok.vocab_size,
        bos_id=tok.bos_id,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
    )
    pad_id = next((i for i in (tok.pad_id, tok.eos_id) if i is not None), 0)

    with journal.tokenize_lock(data_dir):
        for stem, removed in journal.clean_leftovers(data_dir).items():
            summary.cleaned.append(stem)
            _warn(f"removed {len(removed)} file(s) of an interrupted tokenize ({stem})")
        plan = plan_tokenize(
            sources,
            existing_shards(data_dir),
            settings,
            identity=source_identity,
            sha256=source_sha256,
            pack_below_bytes=data_cfg.pack_below_bytes,
            force=force,
        )
        for message in plan.warnings:
            _warn(message)
        summary.up_to_date = [display_path(s.path) for s in plan.up_to_date]  # type: ignore[attr-defined]
        summary.superseded = list(plan.superseded)
        progress.begin(sum(j.nbytes for j in plan.jobs), len(plan.jobs))
        try:
            for job in plan.jobs:
                current = {"name": display_path(job.items[0].source.path)}  # type: ignore[attr-defined]

                def pieces(job: ShardJob = job, current: dict = current) -> Iterator[object]:
                    for item in job.items:
                        current["name"] = display_path(item.source.path)  # type: ignore[attr-defined]
                        yield from iter_pieces(
                            item.source,  # type: ignore[arg-type]
                            boundary=data_cfg.document_boundary,
                            text_field=data_cfg.text_field,
                            on_decode_error=data_cfg.on_decode_error,
                            chunk_bytes=chunk_bytes,
                            start=item.start,
                            end=item.end,
                        )

                encoder = StreamEncoder(
                    tok.encode_batch_arrays,
                    bos_id=bos_id,
                    eos_id=eos_id,
                    cut_rule=tok.cut_rule,
                    segment_chars=segment_chars,
                    batch_chars=batch_chars,
                    max_document_chars=max_document_chars,
                    warn=_warn,
                    source_name=lambda current=current: current["name"],
                )
                shard = _write_shard(
                    cfg, job, data_dir, formats, tok_info, pad_id, encoder, pieces(), progress
                )
                if shard is not None:
                    summary.shards.append(shard)
                    summary.bytes += job.nbytes
                else:
                    names = ", ".join(display_path(i.source.path) for i in job.items)  # type: ignore[attr-defined]
                    _warn(f"{names}: no text to tokenize (only whitespace), no shard written")
        finally:
            progress.end()
    summary.seconds = time.perf_counter() - started
    return summary


def _write_shard(
    cfg: Config,
    job: ShardJob,
    data_dir: Path,
    formats: list[str],
    tok_info: TokenizerInfo,
    pad_id: int,
    encoder: StreamEncoder,
    pieces: Iterator[object],
    progress: TokenizeProgress,
) -> ShardSummary | None:
    stem = unique_stem(data_dir, job.source_stem, cfg.data.seq_len, utc_timestamp())
    writer = ShardWriter(
        data_dir,
        stem,
        seq_len=cfg.data.seq_len,
        formats=formats,
        dtype=bin_dtype_for(tok_info.vocab_size),
        pad_id=pad_id,
        id_range=tok_info.vocab_size,
        vocab_size=cfg.model.vocab_size,
    )
    progress.begin_shard(stem, job.nbytes)
    documents = 0
    try:
        for chunk in encoder.encode(pieces):
            writer.add(chunk.ids)
            documents += chunk.documents
            progress.advance(chunk.bytes_done, int(chunk.ids.size))
        if writer.n_tokens == 0 and writer.n_rows == 0 and not writer.has_pending():
            writer.abort()
            return None
        has_jsonl = any(i.source.format == "jsonl" for i in job.items)  # type: ignore[attr-defined]
        meta = writer.finish(
            tokenizer=tok_info,
            document_boundary=cfg.data.document_boundary,
            sources=[
                {
                    "path": display_path(i.source.path),  # type: ignore[attr-defined]
                    "size": i.source.size,  # type: ignore[attr-defined]
                    "sha256": i.sha256,
                    "byte_range": (i.start, i.end),
                }
                for i in job.items
            ],
            add_bos=cfg.tokenizer.add_bos,
            add_eos=cfg.tokenizer.add_eos,
            text_field=cfg.data.text_field if has_jsonl else None,
            n_documents=documents,
            supersedes=job.supersedes,
        )
    except BaseException:
        writer.abort()
        raise
    finally:
        progress.end_shard()
    return ShardSummary(
        stem=stem,
        shard_id=meta.shard_id,
        sources=[s.path for s in meta.sources],
        why=[i.why for i in job.items],
        documents=documents,
        tokens=meta.n_tokens,
        rows=meta.n_rows,
        files=[f.name for f in meta.files.values()],
    )
