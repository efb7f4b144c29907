"""``allllm tokenizer train`` as a library: byte-level BPE and SentencePiece from raw text.

Whatever is trained must load through TokenizerManager with the same config and
round-trip text; mistakes (wrong backend, hub-like paths, existing files, a
vocabulary larger than the model's) are one-line errors that write nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from allllm.config import Config, TokenizerConfig
from allllm.errors import DataError, TokenizerError
from allllm.tokenizer import TokenizerManager
from allllm.tokenizer.base import NewlineLetterCut
from allllm.tokenizer.training import (
    output_path,
    resolve_kind,
    sentences_for_sentencepiece,
    train_bpe,
    train_sentencepiece,
)
from allllm.use.tokenizer_training import train_tokenizer_from_config


def make_config(tokenizer: dict, vocab_size: int = 512, **data: object) -> Config:
    return Config.model_validate(
        {
            "name": "t",
            "model": {"vocab_size": vocab_size, "hidden_size": 64, "num_layers": 1, "num_heads": 2},
            "tokenizer": tokenizer,
            "data": {"raw_path": "data/raw", "seq_len": 64, **data},
        }
    )


@pytest.fixture
def workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_text: Callable[[int, int], str]
) -> Path:
    """A workspace (the current directory) with three raw text files in data/raw."""
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    for k in range(3):
        (raw / f"doc{k}.txt").write_text(make_text(120, 100 + k), encoding="utf-8")
    return tmp_path


def _raw_text_bytes(workspace: Path) -> int:
    return sum(p.stat().st_size for p in (workspace / "data" / "raw").glob("*.txt"))


# -- the library entry point, fed by the raw reader ----------------------------------------


def test_train_bpe_from_config(workspace: Path, sample_text: str) -> None:
    cfg = make_config({"backend": "hf", "path": "tok/bpe.json"})
    result = train_tokenizer_from_config(cfg, show_progress=True)
    assert result.path == Path("tok/bpe.json") and result.path.is_file()
    assert result.kind == "bpe" and 300 < result.vocab_size <= 512
    assert result.documents == 3 and result.bytes_read == _raw_text_bytes(workspace)
    tok = TokenizerManager.from_config(cfg.tokenizer)
    assert tok.vocab_size == result.vocab_size
    assert tok.decode(tok.encode(sample_text)) == sample_text
    assert (tok.eos_id, tok.pad_id, tok.bos_id) == (0, 1, None)
    assert isinstance(tok.cut_rule, NewlineLetterCut)
    # a smaller vocabulary is a different tokenizer
    smaller = train_tokenizer_from_config(cfg, vocab_size=400, force=True, show_progress=False)
    assert smaller.vocab_size <= 400
    assert TokenizerManager.from_config(cfg.tokenizer).fingerprint != tok.fingerprint


def test_train_sentencepiece_from_config(workspace: Path, sample_text: str) -> None:
    cfg = make_config(
        {"backend": "sentencepiece", "path": "tok/sp.model"}, document_boundary="blank_line"
    )
    result = train_tokenizer_from_config(cfg, vocab_size=420, show_progress=False)
    assert result.kind == "sentencepiece" and result.path == Path("tok/sp.model")
    assert result.documents > 100 and result.vocab_size == 420
    tok = TokenizerManager.from_config(cfg.tokenizer)
    assert tok.decode(tok.encode(sample_text)) == sample_text
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
    assert not list(Path("tok").glob("*.vocab"))  # only the model file is written


def test_train_into_a_new_folder_gives_an_autotokenizer_folder(
    workspace: Path, sample_text: str
) -> None:
    cfg = make_config({"backend": "hf", "path": "./tokenizers/mine"})
    result = train_tokenizer_from_config(cfg, vocab_size=450, show_progress=False)
    folder = Path("tokenizers/mine")
    assert result.path == folder / "tokenizer.json"
    sidecar = json.loads((folder / "tokenizer_config.json").read_text())
    assert (sidecar["eos_token"], sidecar["pad_token"]) == ("<|endoftext|>", "<|pad|>")
    from_folder = TokenizerManager.from_config(cfg.tokenizer)  # through AutoTokenizer
    from_file = TokenizerManager.from_config(TokenizerConfig(backend="hf", path=str(result.path)))
    assert from_folder.encode(sample_text) == from_file.encode(sample_text)
    assert (from_folder.eos_id, from_folder.pad_id) == (0, 1)


def test_existing_output_is_kept_unless_forced(workspace: Path) -> None:
    cfg = make_config({"backend": "sentencepiece", "path": "sp.model"})
    Path("sp.model").write_bytes(b"precious")
    with pytest.raises(TokenizerError, match="already exists — pass --force"):
        train_tokenizer_from_config(cfg, vocab_size=400, show_progress=False)
    assert Path("sp.model").read_bytes() == b"precious"
    train_tokenizer_from_config(cfg, vocab_size=400, force=True, show_progress=False)
    assert TokenizerManager.from_config(cfg.tokenizer).vocab_size == 400


def test_config_mistakes_are_one_line_errors_that_write_nothing(workspace: Path) -> None:
    cases = [
        (make_config({"backend": "byte"}), "cannot train a tokenizer for backend 'byte'"),
        (
            make_config({"backend": "tiktoken", "path": "cl100k_base"}),
            'set tokenizer.backend to "hf"',
        ),
        (make_config({"backend": "hf", "path": "owner/name"}), "looks like a Hugging Face Hub id"),
        (make_config({"backend": "hf", "path": "tok.txt"}), "a .json file or a folder"),
        (make_config({"backend": "sentencepiece", "path": "tok.json"}), "to a .model file"),
    ]
    for cfg, message in cases:
        with pytest.raises(TokenizerError, match=message) as err:
            train_tokenizer_from_config(cfg, show_progress=False)
        assert "\n" not in str(err.value)
    too_big = make_config({"backend": "hf", "path": "t.json"}, vocab_size=300)
    with pytest.raises(TokenizerError, match=r"exceeds model\.vocab_size 300"):
        train_tokenizer_from_config(too_big, vocab_size=301, show_progress=False)
    with pytest.raises(TokenizerError, match="too small for byte-level BPE"):
        train_tokenizer_from_config(too_big, vocab_size=200, show_progress=False)
    Path("notes").write_text("a file, not a folder")
    for path, message in (("notes", "a .json file or a folder"), ("notes/t.json", "cannot write")):
        with pytest.raises(TokenizerError, match=message):
            cfg = make_config({"backend": "hf", "path": path})
            train_tokenizer_from_config(cfg, vocab_size=300, show_progress=False)
    assert sorted(p.name for p in workspace.iterdir()) == ["data", "notes"]


def test_raw_text_problems_reach_the_user_as_data_errors(workspace: Path) -> None:
    raw = workspace / "data" / "raw"
    for p in raw.iterdir():
        p.write_text("  \n\n \t\n")
    for tokenizer in (
        {"backend": "hf", "path": "t.json"},
        {"backend": "sentencepiece", "path": "t.model"},
    ):
        with pytest.raises(DataError, match="no text to train a tokenizer on"):
            train_tokenizer_from_config(make_config(tokenizer), show_progress=False)
    (raw / "doc0.txt").write_bytes(b"good text\n" * 50 + b"bad \xff byte\n")
    for tokenizer in (
        {"backend": "hf", "path": "t.json"},
        {"backend": "sentencepiece", "path": "t.model"},
    ):
        with pytest.raises(DataError, match=r"doc0\.txt"):
            train_tokenizer_from_config(make_config(tokenizer), show_progress=False)
    assert not Path("t.json").exists() and not Path("t.model").exists()


# -- the trainers and helpers on their own ------------------------------------------------


def test_train_bpe_on_an_iterator(tmp_path: Path, corpus_docs: list[str], sample_text: str) -> None:
    out = tmp_path / "sub" / "bpe.json"
    train_bpe((d for d in corpus_docs), 300, out)
    tok = TokenizerManager.from_config(TokenizerConfig(backend="hf", path=str(out)))
    assert tok.vocab_size == 300
    assert tok.decode(tok.encode(sample_text)) == sample_text
    assert not (out.parent / "tokenizer_config.json").exists()


def test_sentencepiece_reader_errors_pass_through(tmp_path: Path, corpus_docs: list[str]) -> None:
    def texts() -> Iterator[str]:
        yield from corpus_docs[:5]
        raise DataError("raw.txt: invalid UTF-8 at byte 7")

    with pytest.raises(DataError, match="invalid UTF-8 at byte 7"):
        train_sentencepiece(texts(), 400, tmp_path / "x.model")
    with pytest.raises(TokenizerError, match="too small for SentencePiece"):
        train_sentencepiece(iter(corpus_docs), 100, tmp_path / "x.model")
    many_chars = [
        "".join(chr(c) for c in range(0x4E00 + k * 50, 0x4E00 + k * 50 + 50)) for k in range(20)
    ]
    with pytest.raises(TokenizerError, match=r"SentencePiece training failed: .*required_chars"):
        train_sentencepiece(iter(many_chars * 3), 300, tmp_path / "x.model")
    assert not (tmp_path / "x.model").exists()


def test_sentences_for_sentencepiece_are_bounded_and_lossless() -> None:
    long_line = "é😀a" * 3000  # 21000 bytes
    text = f"first line\n\n   \n{long_line}\r\nlast"
    out = list(sentences_for_sentencepiece([text], max_bytes=1000))
    assert out[0] == "first line" and out[-1] == "last"
    middle = out[1:-1]
    assert "".join(middle) == long_line
    assert all(len(s.encode()) <= 1000 for s in middle) and len(middle) == 22


def test_kind_and_output_path_rules(tmp_path: Path) -> None:
    assert resolve_kind("hf", None) == "bpe"
    assert resolve_kind("sentencepiece", "sentencepiece") == "sentencepiece"
    with pytest.raises(TokenizerError, match=r"tokenizer\.backend is 'hf'"):
        resolve_kind("hf", "sentencepiece")
    with pytest.raises(TokenizerError, match="unknown tokenizer kind"):
        resolve_kind("hf", "wordpiece")
    cfg = TokenizerConfig(backend="hf", path=str(tmp_path))  # an existing folder
    assert output_path(cfg, "bpe") == (tmp_path / "tokenizer.json", True)
    cfg = TokenizerConfig(backend="hf", path="a/b.json")
    assert output_path(cfg, "bpe") == (Path("a/b.json"), False)
    cfg = TokenizerConfig(backend="sentencepiece", path="m/sp.model")
    assert output_path(cfg, "sentencepiece") == (Path("m/sp.model"), False)
