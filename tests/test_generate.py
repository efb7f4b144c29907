"""``allllm generate``: seeded sampling, cache = no cache, streaming decode, EOS, errors, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from allllm.config import TokenizerConfig, load_config
from allllm.errors import CheckpointError
from allllm.tokenizer.manager import TokenizerManager
from allllm.use.generate import (
    REPLACEMENT,
    SamplingSettings,
    TextStream,
    fit_prompt,
    generate_text,
    prompt_ids,
)
from allllm.use.trained import find_trained_checkpoint, load_trained
from cli_helpers import cli_exit_code, heavy_imports_of
from use_helpers import inside, load_micro, trained_workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_workspace(tmp_path_factory.mktemp("gen"))


def _gen(ws: Path, prompt: str = "The river", **kw: object) -> object:
    use_cache = bool(kw.pop("use_cache", True))
    return generate_text(
        load_micro(ws),
        prompt,
        SamplingSettings(**kw),
        use_cache=use_cache,  # type: ignore[arg-type]
    )


def test_same_seed_same_text_and_another_seed_differs(ws: Path) -> None:
    a = _gen(ws, max_new_tokens=40, temperature=1.0, seed=5)
    b = _gen(ws, max_new_tokens=40, temperature=1.0, seed=5)
    c = _gen(ws, max_new_tokens=40, temperature=1.0, seed=6)
    assert a.text == b.text and a.seed == 5  # type: ignore[attr-defined]
    assert a.text != c.text  # type: ignore[attr-defined]
    assert a.new_tokens == 40 and not a.stopped_at_eos  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "kw",
    [
        {"temperature": 0.0},
        {"temperature": 0.9, "top_k": 20, "seed": 1},
        {"temperature": 1.2, "top_p": 0.8, "seed": 2},
        # longer than the 64 positions: the window slides, with and without the cache alike
        {"temperature": 0.8, "seed": 3, "max_new_tokens": 150},
    ],
)
def test_cache_and_no_cache_generate_the_same(ws: Path, kw: dict) -> None:
    kw = {"max_new_tokens": 30, **kw}
    cached = _gen(ws, **kw)
    plain = _gen(ws, use_cache=False, **kw)
    assert cached.text == plain.text  # type: ignore[attr-defined]
    assert cached.new_tokens == plain.new_tokens > 0  # type: ignore[attr-defined]
    assert cached.stopped_at_eos == plain.stopped_at_eos  # type: ignore[attr-defined]


def test_training_made_generation_better_than_chance(ws: Path) -> None:
    text = _gen(ws, "", max_new_tokens=60, temperature=0.0).text  # type: ignore[attr-defined]
    letters = sum(ch.isalpha() or ch in " .\n" for ch in text)
    assert letters / max(1, len(text)) > 0.9  # random bytes would be ~25% letters and spaces


def test_stops_at_eos_and_never_samples_ids_the_tokenizer_lacks(ws: Path) -> None:
    trained = load_micro(ws)
    bias = trained.model.lm_head.bias
    with torch.no_grad():
        bias[260] = 1e4  # an embedding row beyond the byte tokenizer's 259 ids
    result = generate_text(trained, "x", SamplingSettings(max_new_tokens=5, temperature=0.0))
    assert result.new_tokens == 5 and "\x00" not in result.text  # 260 was never chosen
    with torch.no_grad():
        bias[trained.tokenizer.eos_id] = 2e4
    result = generate_text(trained, "x", SamplingSettings(max_new_tokens=5, temperature=0.0))
    assert result.stopped_at_eos and result.new_tokens == 0 and result.text == ""


def test_text_stream_holds_back_half_characters() -> None:
    tok = TokenizerManager.from_config(TokenizerConfig(backend="byte"))
    text = "naïve 😀 日本語 café"
    stream = TextStream(tok, tok.encode("Prompt: "))
    pieces = [stream.push(i) for i in tok.encode(text)]
    assert all(REPLACEMENT not in p for p in pieces)
    assert "".join(pieces) + stream.finish() == text == stream.printed
    assert sum(1 for p in pieces if p) < len(tok.encode(text))  # some bytes waited for the rest

    broken = TextStream(tok)
    assert broken.push(0xE6) == "" and broken.push(0x97) == ""  # two bytes of a 3-byte character
    assert broken.finish() == REPLACEMENT  # generation ended mid-character: shown as U+FFFD


def test_text_stream_long_output_equals_one_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    tok = TokenizerManager.from_config(TokenizerConfig(backend="byte"))
    monkeypatch.setattr(TextStream, "REANCHOR", 7)  # re-anchor often, mid-character too
    text = "日本語 and ascii, émoji 😀 " * 20
    stream = TextStream(tok, tok.encode("p"))
    out = "".join(stream.push(i) for i in tok.encode(text)) + stream.finish()
    assert out == text


def test_text_stream_keeps_sentencepiece_spaces(sp_tokenizer_config: TokenizerConfig) -> None:
    tok = TokenizerManager.from_config(sp_tokenizer_config)
    prompt, rest = "The people", " would make the world good"
    ids = tok.encode(prompt + rest)
    head = tok.encode(prompt)
    assert ids[: len(head)] == head
    stream = TextStream(tok, head)
    out = "".join(stream.push(i) for i in ids[len(head) :]) + stream.finish()
    assert out == tok.decode(ids)[len(tok.decode(head)) :]
    assert out.startswith(" ")  # decoding the new ids alone would lose this space


def test_prompts_start_like_documents_and_fit_the_context(ws: Path) -> None:
    with inside(ws):
        cfg = load_config(model="micro")
    tok = TokenizerManager.from_config(cfg.tokenizer)
    assert prompt_ids(cfg, tok, "ab") == [97, 98]
    assert prompt_ids(cfg, tok, "") == [tok.eos_id]  # a new document follows an EOS
    with_bos = cfg.model_copy(
        update={"tokenizer": cfg.tokenizer.model_copy(update={"add_bos": True})}
    )
    assert prompt_ids(with_bos, tok, "a") == [tok.bos_id, 97]
    kept, dropped = fit_prompt(list(range(100)), 10, 64)
    assert kept == list(range(46, 100)) and dropped == 46
    kept, dropped = fit_prompt(list(range(100)), 500, 64)
    assert len(kept) == 32 and dropped == 68  # many new tokens: the prompt keeps half
    long = _gen(ws, "word " * 40, max_new_tokens=10, temperature=0.0)
    assert long.prompt_truncated == 200 - 54 and long.new_tokens == 10  # type: ignore[attr-defined]


def test_missing_checkpoint_and_bad_step_are_one_line_errors(ws: Path, tmp_path: Path) -> None:
    with inside(ws):
        cfg = load_config(model="micro")
        steps = [r.step for r in [find_trained_checkpoint(cfg)]]
        with pytest.raises(CheckpointError, match=r"no checkpoint at step 999 .*available steps"):
            load_trained(cfg, 999)
        assert load_trained(cfg, steps[0], device="cpu").step == steps[0]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "micro.json").write_text((ws / "configs/micro.json").read_text())
    with inside(tmp_path), pytest.raises(CheckpointError, match=r"no checkpoint in .* train first"):
        load_trained(load_config(model="micro"))


def test_cli_streams_text_and_prints_json(
    ws: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ws)
    args = ["generate", "--model", "micro", "--prompt", "The", "-n", "20", "--seed", "4"]
    assert cli_exit_code(args) == 0
    out, err = capsys.readouterr()
    assert out.startswith("The") and "seed 4" in err and "20 tokens" in err
    assert cli_exit_code([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "The" + data["text"] == out.rstrip("\n")  # the stream printed exactly this text
    assert data["new_tokens"] == 20 and data["seed"] == 4 and data["step"] > 0
    (ws / "prompt.txt").write_text("The", encoding="utf-8")
    assert (
        cli_exit_code(
            ["generate", "-m", "micro", "--prompt-file", "prompt.txt", "-n", "20", "--seed", "4"]
        )
        == 0
    )
    assert capsys.readouterr().out == out


def test_cli_errors(
    ws: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ws)
    assert cli_exit_code(["generate", "--model", "micro", "--prompt", "x", "--step", "999"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no checkpoint at step 999") and err.count("\n") == 1
    assert cli_exit_code(["generate", "--model", "micro", "--temperature", "-1"]) == 2
    assert cli_exit_code(["generate", "--model", "micro", "-p", "a", "--prompt-file", "x.txt"]) == 2
    capsys.readouterr()
    (ws / "latin1.txt").write_bytes(b"caf\xe9")
    for name, says in (("missing.txt", "No such file"), ("latin1.txt", "not UTF-8 text (byte 3)")):
        assert cli_exit_code(["generate", "--model", "micro", "--prompt-file", name]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: --prompt-file {name}: ") and says in err, err
        assert err.count("\n") == 1


def test_status_with_checkpoints_does_not_import_torch(ws: Path) -> None:
    """`status` checks the latest checkpoint's safetensors header without loading torch."""
    with inside(ws):
        assert heavy_imports_of(["status", "--model", "micro"]) == []
