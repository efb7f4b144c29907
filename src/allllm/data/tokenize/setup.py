"""What every shard job of a tokenize run shares: the loaded tokenizer and what derives from it.

Loaded once per process before anything is written, so a tokenizer whose ids do not fit
the model is refused with nothing changed on disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allllm.config import Config
from allllm.data.shard_format import TokenizerInfo
from allllm.data.tokenize.plan import Settings
from allllm.errors import DataError


def ensure_writable_dir(data_dir: Path) -> None:
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"data.dir {data_dir} is not a directory", "point data.dir at a folder")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create data dir {data_dir}: {exc.strerror}",
            "fix data.dir in the config or the folder's permissions",
        ) from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise DataError(
            f"data dir {data_dir} is not writable", "fix its permissions or choose another data.dir"
        )


@dataclass(frozen=True)
class Setup:
    """The loaded tokenizer and everything derived from it and the config, for every shard."""

    cfg: Config
    encode_batch: Callable[[list[str]], Any]
    encode_batch_arrays: Callable[[list[str]], Any] | None
    encode_joined: Callable[[list[str]], Any] | None
    bos_id: int | None
    eos_id: int | None
    cut_rule: Any
    settings: Settings
    tok_info: TokenizerInfo
    pad_id: int
    formats: list[str]
    workers: int = 1  # batches the encoder runs at once


def load_setup(cfg: Config, num_threads: int | None, extra_formats: list[str] | None) -> Setup:
    """Load the tokenizer and refuse it, before anything is written, if its ids do not fit."""
    from allllm.tokenizer._shared import default_num_threads
    from allllm.tokenizer.base import TokenizerBackend
    from allllm.tokenizer.manager import TokenizerManager

    tok = TokenizerManager.from_config(cfg.tokenizer, num_threads=num_threads)
    tok.check_vocab(cfg.model.vocab_size)
    workers = 1
    if tok.concurrent_batches:  # several one-thread batches at once: no idle core between them
        workers = num_threads or default_num_threads()
        tok.set_num_threads(1)
    bos_id, eos_id = tok.special_ids_for_document()
    # backends that make uint32 arrays themselves (tiktoken, byte) can skip Python int lists
    native = type(tok.backend).encode_batch_arrays is not TokenizerBackend.encode_batch_arrays
    joins = type(tok.backend).encode_joined is not TokenizerBackend.encode_joined
    return Setup(
        cfg=cfg,
        encode_batch=tok.encode_batch,
        encode_batch_arrays=tok.encode_batch_arrays if native else None,
        # one call per batch, on one thread: only where batches run concurrently anyway
        encode_joined=tok.encode_joined if joins and tok.concurrent_batches else None,
        bos_id=bos_id,
        eos_id=eos_id,
        cut_rule=tok.cut_rule,
        settings=Settings(
            fingerprint=tok.fingerprint,
            seq_len=cfg.data.seq_len,
            document_boundary=cfg.data.document_boundary,
            add_bos=cfg.tokenizer.add_bos,
            add_eos=cfg.tokenizer.add_eos,
            text_field=cfg.data.text_field,
        ),
        tok_info=TokenizerInfo(
            backend=cfg.tokenizer.backend,
            path=cfg.tokenizer.path,
            fingerprint=tok.fingerprint,
            vocab_size=tok.vocab_size,
            bos_id=tok.bos_id,
            eos_id=tok.eos_id,
            pad_id=tok.pad_id,
        ),
        pad_id=next((i for i in (tok.pad_id, tok.eos_id) if i is not None), 0),
        formats=list(dict.fromkeys([*cfg.data.formats, *(extra_formats or [])])),
        workers=workers,
    )
