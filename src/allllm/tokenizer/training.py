"""``allllm tokenizer train``: a byte-level BPE (Hugging Face) or SentencePiece BPE from the raw text.

Texts stream from the raw reader one document (or bounded piece) at a time
and are never collected, so memory stays bounded on gigabytes of text: the
``tokenizers`` trainer keeps word counts, SentencePiece keeps a bounded random
sample of sentences (``input_sentence_size``). The result is written
atomically where ``tokenizer.path`` points, so the config that trained it
loads it unchanged.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from allllm.errors import DataError, TokenizerError
from allllm.tokenizer._shared import default_num_threads

if TYPE_CHECKING:
    from allllm.config import Config, DataConfig, TokenizerConfig
    from allllm.data.raw import RawSource

#: training kind -> the tokenizer.backend that loads its output
KIND_BACKEND = {"bpe": "hf", "sentencepiece": "sentencepiece"}
BACKEND_KIND = {backend: kind for kind, backend in KIND_BACKEND.items()}

BPE_SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")
SP_MAX_SENTENCE_BYTES = 4192  # SentencePiece's default; longer sentences would be dropped
SP_INPUT_SENTENCES = 2_000_000  # the bounded random sample SentencePiece trains on


@dataclass(frozen=True)
class TrainResult:
    """What was trained: where it is, its kind, its id range and how much raw input it read.

    ``documents`` follows ``data.document_boundary``; ``bytes_read`` counts bytes
    of the raw files (compressed bytes for ``.gz``).
    """

    path: Path
    kind: str
    vocab_size: int
    documents: int
    bytes_read: int


class _RawFeed:
    """The raw sources' texts for a trainer, counting documents and bytes read and moving the bar.

    Reads through the raw reader's batch API, which says where each document
    starts and how many bytes of the file (compressed, for ``.gz``) are read.
    """

    def __init__(
        self, data_cfg: DataConfig, sources: list[RawSource], advance: Callable[[int], None]
    ) -> None:
        self._data_cfg = data_cfg
        self._sources = sources
        self._advance = advance
        self.documents = 0
        self.bytes_read = 0

    def __iter__(self) -> Iterator[str]:
        from allllm.data.raw import iter_batches

        cfg = self._data_cfg
        for source in self._sources:
            done = 0
            for batch in iter_batches(
                source,
                boundary=cfg.document_boundary,
                text_field=cfg.text_field,
                on_decode_error=cfg.on_decode_error,
            ):
                self.documents += sum(batch.doc_starts)
                yield from batch.texts
                self._advance(batch.read_bytes - done)
                self.bytes_read += batch.read_bytes - done
                done = batch.read_bytes
        if not self.documents:
            where = ", ".join(cfg.raw_paths)
            raise DataError(f"no text to train a tokenizer on in {where}", "check data.raw_path")


class _KeepError:
    """Passes ``texts`` through and keeps the exception that ended them.

    SentencePiece turns an exception raised inside its iterator into a generic
    RuntimeError; keeping the original lets a DataError reach the user intact.
    """

    def __init__(self, texts: Iterable[str]) -> None:
        self._texts = texts
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._texts
        except BaseException as exc:
            self.error = exc
            raise


# -- output locations -----------------------------------------------------------------------------


def resolve_kind(backend: str, kind: str | None) -> str:
    """The training kind for ``tokenizer.backend`` (an explicit kind must match it)."""
    if backend not in BACKEND_KIND:
        raise TokenizerError(
            f"cannot train a tokenizer for backend {backend!r}",
            'set tokenizer.backend to "hf" (byte-level BPE) or "sentencepiece" and tokenizer.path '
            "to where the new tokenizer should go",
        )
    if kind is None:
        return BACKEND_KIND[backend]
    if kind not in KIND_BACKEND:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}", "use bpe or sentencepiece")
    if KIND_BACKEND[kind] != backend:
        raise TokenizerError(
            f"a {kind} tokenizer is loaded by backend {KIND_BACKEND[kind]!r}, but "
            f"tokenizer.backend is {backend!r}",
            f'set tokenizer.backend to "{KIND_BACKEND[kind]}" or drop --kind',
        )
    return kind


def output_path(tok_cfg: TokenizerConfig, kind: str) -> tuple[Path, bool]:
    """Where the trained tokenizer goes, and whether that is a tokenizer folder (hf only)."""
    from allllm.tokenizer.hf import looks_like_hub_id

    raw = str(tok_cfg.path or "")
    path = Path(raw).expanduser()
    if not raw:
        raise TokenizerError("tokenizer.path is empty", "set it to where the tokenizer should go")
    if kind == "sentencepiece":
        if path.suffix != ".model" or path.is_dir():
            raise TokenizerError(
                f"tokenizer.path {raw}: a SentencePiece tokenizer is written to a .model file",
                "set tokenizer.path to e.g. tokenizers/mine.model",
            )
        return path, False
    if path.is_dir():
        return path / "tokenizer.json", True
    if path.suffix == ".json":
        return path, False
    if not path.suffix and not path.exists():
        if looks_like_hub_id(raw):
            raise TokenizerError(
                f"tokenizer.path {raw!r} looks like a Hugging Face Hub id, not a local folder",
                f"write ./{raw} for a new local folder, or name a .json file",
            )
        return path / "tokenizer.json", True
    raise TokenizerError(
        f"tokenizer.path {raw}: a Hugging Face tokenizer is written to a .json file or a folder",
        "set tokenizer.path to e.g. tokenizers/mine/tokenizer.json or tokenizers/mine",
    )


def _write(path: Path, data: str | bytes) -> None:
    """Write atomically (the old file, if any, survives a crash); OSError becomes one line."""
    from allllm.util.atomic import atomic_write_bytes, atomic_write_text

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            atomic_write_bytes(path, data)
        else:
            atomic_write_text(path, data)
    except OSError as exc:
        raise TokenizerError(
            f"{path}: cannot write the tokenizer: {exc.strerror or exc}",
            "choose a writable tokenizer.path",
        ) from None


def _refuse_overwrite(paths: Iterable[Path]) -> None:
    for p in paths:
        if p.exists():
            raise TokenizerError(
                f"{p} already exists", "pass --force to replace it, or change tokenizer.path"
            )


# -- trainers -------------------------------------------------------------------------------------


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    out_path: Path,
    *,
    folder: bool = False,
    special_tokens: tuple[str, ...] = BPE_SPECIAL_TOKENS,
    model_max_length: int | None = None,
) -> None:
    """Train a GPT-2-style byte-level BPE and write it as ``out_path`` (a tokenizer.json).

    ``folder`` also writes a ``tokenizer_config.json`` beside it naming EOS and
    PAD, so transformers' AutoTokenizer loads the folder too.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    minimum = 256 + len(special_tokens)
    if vocab_size < minimum:
        raise TokenizerError(
            f"vocab_size {vocab_size} is too small for byte-level BPE",
            f"use at least {minimum} (256 bytes + {len(special_tokens)} special tokens)",
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # allllm shows one progress bar, over bytes read
    )
    tok.train_from_iterator(texts, trainer=trainer)
    _write(out_path, tok.to_str(pretty=True))
    if folder:
        sidecar = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": None,
            "eos_token": special_tokens[0],
            "pad_token": special_tokens[1] if len(special_tokens) > 1 else None,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
        }
        if model_max_length is not None:
            sidecar["model_max_length"] = model_max_length
        _write(out_path.parent / "tokenizer_config.json", json.dumps(sidecar, indent=2) + "\n")


def sentences_for_sentencepiece(
    texts: Iterable[str], max_bytes: int = SP_MAX_SENTENCE_BYTES
) -> Iterator[str]:
    """Non-empty lines, long ones cut into pieces of at most ``max_bytes`` UTF-8 bytes.

    SentencePiece silently skips sentences longer than its limit; cutting keeps
    their text (at a character boundary) and bounds the memory of its sample.
    """
    max_bytes = max(max_bytes, 4)  # room for any one character
    for text in texts:
        for line in text.splitlines():
            if not line.strip():
                continue
            if len(line) * 4 <= max_bytes:  # fits whatever its characters
                yield line
                continue
            data = line.encode("utf-8", "surrogatepass")
            start = 0
            while start < len(data):
                end = min(start + max_bytes, len(data))
                while end < len(data) and data[end] & 0xC0 == 0x80:  # inside a character
                    end -= 1
                yield data[start:end].decode("utf-8", "surrogatepass")
                start = end


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    out_path: Path,
    *,
    input_sentence_size: int = SP_INPUT_SENTENCES,
    max_sentence_length: int = SP_MAX_SENTENCE_BYTES,
    num_threads: int | None = None,
) -> None:
    """Train a SentencePiece BPE (Llama-style: byte fallback, no normalization) to ``out_path``.

    The text is kept exactly (identity normalization, whitespace kept), so
    decode(encode(text)) == text. Ids: unk 0, BOS 1, EOS 2, PAD 3.
    """
    import sentencepiece as spm

    minimum = 256 + 4 + 1  # byte pieces, unk/bos/eos/pad, and at least one learned piece
    if vocab_size < minimum:
        raise TokenizerError(
            f"vocab_size {vocab_size} is too small for SentencePiece with byte fallback",
            f"use at least {minimum} (256 bytes + 4 special pieces + the text's characters)",
        )
    feed = _KeepError(texts)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences_for_sentencepiece(feed, max_sentence_length),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # a small corpus gives fewer pieces, as BPE does
            byte_fallback=True,
            character_coverage=0.9995,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            max_sentence_length=max_sentence_length,
            train_extremely_large_corpus=False,
            num_threads=num_threads or default_num_threads(),
            minloglevel=2,
        )
    except RuntimeError as exc:
        if feed.error is not None:
            raise feed.error from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "training failed"
        raise TokenizerError(
            f"SentencePiece training failed: {first.removeprefix('INTERNAL: ')[:300]}",
            "adjust --vocab-size (or give more text)",
        ) from None
    _write(out_path, model.getvalue())


# -- the library entry point of `allllm tokenizer train` ---------------------------------------


@contextmanager
def _byte_progress(total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda _n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("training tokenizer"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("train", total=total or None)
        yield lambda n: progress.advance(task, n)


def train_tokenizer_from_config(
    cfg: Config,
    vocab_size: int | None = None,
    kind: str | None = None,
    force: bool = False,
    show_progress: bool = True,
) -> TrainResult:
    """Train a tokenizer on ``cfg.data.raw_path`` and write it where ``cfg.tokenizer.path`` says.

    ``vocab_size`` defaults to ``model.vocab_size`` and may not exceed it.
    Existing files are kept unless ``force``. The result is loaded back through
    TokenizerManager, so a config that trains also loads.
    """
    from allllm.data.raw import resolve_sources
    from allllm.tokenizer.manager import TokenizerManager

    tok_cfg = cfg.tokenizer
    kind = resolve_kind(tok_cfg.backend, kind)
    out, folder = output_path(tok_cfg, kind)
    limit = cfg.model.vocab_size
    size = limit if vocab_size is None else vocab_size
    if size > limit:
        raise TokenizerError(
            f"vocab_size {size} exceeds model.vocab_size {limit}",
            "lower --vocab-size or raise model.vocab_size",
        )
    if not force:
        _refuse_overwrite([out, out.parent / "tokenizer_config.json"] if folder else [out])

    sources = resolve_sources(cfg.data.raw_paths)
    with _byte_progress(sum(s.size for s in sources), show_progress) as advance:
        feed = _RawFeed(cfg.data, sources, advance)
        if kind == "bpe":
            train_bpe(
                feed,
                size,
                out,
                folder=folder,
                model_max_length=cfg.model.max_position_embeddings,
            )
        else:
            train_sentencepiece(feed, size, out)

    manager = TokenizerManager.from_config(tok_cfg)
    manager.check_vocab(limit)
    return TrainResult(
        path=out,
        kind=kind,
        vocab_size=manager.vocab_size,
        documents=feed.documents,
        bytes_read=feed.bytes_read,
    )
