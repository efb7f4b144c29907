"""``allllm eval`` (loss = the mean token loss, ppl = exp) and ``allllm export`` (transformers
loads the folder and computes the same logits; AutoTokenizer gives the same ids)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from allllm.config import TokenizerConfig, load_config
from allllm.data.dataset import ShardDataset
from allllm.data.registry import ScanSpec, TokenizerIdentity, scan_shards
from allllm.data.valsplit import split_rows
from allllm.errors import CheckpointError, DataError
from allllm.hf.tokenizer_export import export_tokenizer
from allllm.tokenizer.manager import TokenizerManager
from allllm.use.evaluate import evaluate_model
from allllm.use.export import export_model
from allllm.use.trained import TrainedModel
from cli_helpers import cli_exit_code
from use_helpers import inside, load_micro, trained_workspace

transformers = pytest.importorskip("transformers", reason="export is checked with transformers")

SAMPLE = "The river was quiet in the morning. Straße, café, 日本語 and 😀!\n\n  Indented\ttab.\n"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_workspace(tmp_path_factory.mktemp("eval"))


def _scan(ws: Path):  # -> (cfg, ScanResult)
    cfg = load_config(model="micro")
    tok = TokenizerManager.from_config(cfg.tokenizer)
    ident = TokenizerIdentity.from_description(tok.describe())
    return cfg, scan_shards(cfg.data_dir, ScanSpec.from_config(cfg, ident))


def _manual_loss(model: torch.nn.Module, ds: ShardDataset, rows: np.ndarray) -> tuple[float, int]:
    """Sum of next-token cross-entropies over the valid positions, the slow obvious way."""
    total, count = 0.0, 0
    with torch.no_grad():
        for r in rows:
            ids, n = ds[int(r)]
            logits = model.logits(ids[None, :n])[0]
            total += float(F.cross_entropy(logits[:-1], ids[1:n], reduction="sum"))
            count += n - 1
    return total, count


def test_eval_of_a_known_shard_is_its_mean_token_loss(ws: Path) -> None:
    trained = load_micro(ws)
    with inside(ws):
        cfg, scan = _scan(ws)
        entry = scan.shards[0]
        result = evaluate_model(trained, shards=entry.name + "*")
        ds = ShardDataset([entry.source(cfg.data_dir)], vocab_limit=cfg.model.vocab_size)
        total, count = _manual_loss(trained.model, ds, np.arange(entry.n_rows))
    assert result.rows == entry.n_rows and result.tokens == count
    assert result.loss == pytest.approx(total / count, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.loss), rel=1e-12)
    assert result.shards[0]["role"] == "all"


def test_default_eval_reads_the_validation_rows_of_seen_shards(ws: Path) -> None:
    trained = load_micro(ws)
    with inside(ws):
        cfg, scan = _scan(ws)
        result = evaluate_model(trained)
        expected = {
            e.name: split_rows(cfg.train.seed, e.shard_id, e.n_rows, cfg.data.val_fraction)[1]
            for e in scan.shards
        }
        ds = ShardDataset([e.source(cfg.data_dir) for e in scan.shards], vocab_limit=264)
        rows = np.concatenate([expected[e.name] + ds.offsets[i] for i, e in enumerate(scan.shards)])
        total, count = _manual_loss(trained.model, ds, rows)
    assert {s["name"]: s["rows"] for s in result.shards} == {k: v.size for k, v in expected.items()}
    assert all(s["role"] == "validation" for s in result.shards)
    assert result.rows == rows.size > 0 and result.tokens == count
    assert result.loss == pytest.approx(total / count, rel=1e-5)
    assert result.loss < math.log(256)  # it learned something


def test_eval_errors(ws: Path) -> None:
    trained = load_micro(ws)
    with inside(ws), pytest.raises(DataError, match="--shards 'nope\\*': no shard"):
        evaluate_model(trained, shards="nope*")


def _assert_transformers_agree(
    out: Path, trained: TrainedModel, text: str, n_tokens: int
) -> torch.Tensor:
    """transformers' model and tokenizer loaded from ``out`` give our logits and our ids."""
    ids = torch.tensor([trained.tokenizer.encode(text)[:n_tokens]])
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            hf_model(input_ids=ids).logits, trained.model.logits(ids), rtol=0, atol=1e-4
        )
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf_tok(text, add_special_tokens=False).input_ids == trained.tokenizer.encode(text)
    return ids


def test_export_phi_loads_in_transformers_with_equal_logits(ws: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    with inside(ws):
        result = export_model(load_config(model="micro"), out)
    assert result.architecture == "PhiForCausalLM" and result.tokenizer == "byte"
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= set(
        result.files
    )
    trained = load_micro(ws)
    _assert_transformers_agree(out, trained, SAMPLE, 60)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf_tok.eos_token_id == trained.tokenizer.eos_id == 257
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 257 and gen["pad_token_id"] == 258
    provenance = json.loads((out / "allllm_export.json").read_text())
    assert provenance["step"] == trained.step and provenance["config"] == "micro"


def test_export_llama_with_an_hf_tokenizer(tmp_path: Path, hf_bpe_json: Path) -> None:
    """A llama-family micro model trained one step, with the HF BPE fixture as its tokenizer."""
    ws = trained_workspace(
        tmp_path / "ws",
        max_steps=1,
        model={
            "arch": "llama",
            "vocab_size": 640,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_layers": 2,
            "num_heads": 2,
            "num_kv_heads": 1,
            "max_position_embeddings": 64,
            "partial_rotary_factor": 1.0,
        },
        tokenizer={"backend": "hf", "path": str(hf_bpe_json)},
    )
    out = tmp_path / "hf"
    with inside(ws):
        result = export_model(load_config(model="micro"), out, dtype="fp32")
    assert result.architecture == "LlamaForCausalLM" and result.tokenizer == "hf"
    trained = load_micro(ws)
    text = SAMPLE.replace("😀", "")
    ids = _assert_transformers_agree(out, trained, text, 50)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf_tok.decode(ids[0].tolist()) == trained.tokenizer.decode(ids[0].tolist())


def test_export_bf16_and_the_out_dir_rules(ws: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    with inside(ws):
        cfg = load_config(model="micro")
        export_model(cfg, out, dtype="bf16")
        from safetensors import safe_open

        with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
            assert fh.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
        mine = out / "notes.txt"
        mine.write_text("keep me")
        with pytest.raises(CheckpointError, match=r"is not empty .*--force"):
            export_model(cfg, out)
        export_model(cfg, out, force=True)  # replaces the export's files, keeps the rest
        assert mine.read_text() == "keep me"
        assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        with pytest.raises(CheckpointError, match=r"cannot write to .*a-file/out"):
            export_model(cfg, blocker / "out")
        with pytest.raises(CheckpointError, match="exists and is not a directory"):
            export_model(cfg, blocker)
        with pytest.raises(CheckpointError, match="no checkpoint at step 12345"):
            export_model(cfg, tmp_path / "new", step=12345)
    assert not (tmp_path / "new").exists()  # nothing is created for a refused export


def test_tokenizer_export_of_folder_and_sentencepiece(
    tmp_path: Path,
    hf_bpe_folder: Path,
    sp_model: Path,
) -> None:
    text = SAMPLE.replace("😀", "")
    cfg = TokenizerConfig(backend="hf", path=str(hf_bpe_folder))
    ours = TokenizerManager.from_config(cfg)
    (tmp_path / "hf").mkdir()
    export_tokenizer(cfg, ours, tmp_path / "hf")
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert theirs(text, add_special_tokens=False).input_ids == ours.encode(text)

    cfg = TokenizerConfig(backend="sentencepiece", path=str(sp_model))
    ours = TokenizerManager.from_config(cfg)
    (tmp_path / "sp").mkdir()
    result = export_tokenizer(cfg, ours, tmp_path / "sp")
    assert (tmp_path / "sp" / "tokenizer.model").read_bytes() == sp_model.read_bytes()
    try:
        import google.protobuf  # noqa: F401  (transformers reads .model files with it)
    except ImportError:
        assert result.files == ["tokenizer.model"] and "pip install protobuf" in (result.note or "")
        return
    assert result.note is None and "tokenizer.json" in result.files
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "sp"))
    assert theirs(text, add_special_tokens=False).input_ids == ours.encode(text)
    assert theirs.decode(ours.encode(text)) == ours.decode(ours.encode(text))


def test_tiktoken_export_says_there_is_no_hf_form(
    tmp_path: Path, tiktoken_tokenizer_config: TokenizerConfig
) -> None:
    ours = TokenizerManager.from_config(tiktoken_tokenizer_config)
    result = export_tokenizer(tiktoken_tokenizer_config, ours, tmp_path)
    assert result.files == [] and "no Hugging Face form" in (result.note or "")
    assert not any(tmp_path.iterdir())


def test_cli_eval_and_export(
    ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ws)
    assert cli_exit_code(["eval", "--model", "micro", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"loss", "perplexity", "tokens"} <= set(data)
    assert data["perplexity"] == pytest.approx(math.exp(data["loss"]))
    assert cli_exit_code(["eval", "--model", "micro"]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert cli_exit_code(["export", "--model", "micro", "--out", str(tmp_path / "x")]) == 0
    assert "PhiForCausalLM" in capsys.readouterr().out
    assert cli_exit_code(["export", "--model", "micro", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not empty" in err and err.count("\n") == 1
    assert (
        cli_exit_code(["export", "--model", "micro", "-o", str(tmp_path / "y"), "--dtype", "int8"])
        == 2
    )
