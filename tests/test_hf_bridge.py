"""Our model against transformers' PhiForCausalLM / LlamaForCausalLM on the same weights.

Both directions: HF → ours (save_pretrained, from_hf) and ours → HF (to_hf,
from_pretrained). Logits, losses and gradients must agree to 1e-4 in fp32.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from allllm.errors import AllllmError, CheckpointError, ConfigError
from allllm.hf import build_model, from_hf, to_hf
from allllm.hf.weights_out import hf_state_dict
from allllm.model import Transformer, generate
from model_helpers import CONFIGS, randomize, tiny_config

transformers = pytest.importorskip("transformers", reason="the HF bridge tests need transformers")

EXPORTABLE = [n for n in CONFIGS if n != "mixed-rms-gelu-qknorm"]  # HF computes none of the mixes


def hf_model(name: str, attn: str = "eager", seed: int = 0) -> torch.nn.Module:
    """A transformers model with our config ``name`` (through its config.json) and random weights."""
    ours = Transformer(tiny_config(**CONFIGS[name]), init=False)
    from allllm.hf.config_map import hf_config_from_model

    data = hf_config_from_model(ours.config)
    config = transformers.AutoConfig.for_model(**data)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    randomize(model, seed)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def batch(vocab: int = 101, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 13), generator=torch.Generator().manual_seed(seed))


def our_grads_by_hf_name(model: Transformer) -> dict[str, torch.Tensor]:
    """Our gradients split and renamed like the HF parameters they belong to."""
    grads = Transformer(model.config, init=False)
    with torch.no_grad():
        for (_, p), (_, g) in zip(model.named_parameters(), grads.named_parameters()):
            g.copy_(p.grad)
    return hf_state_dict(grads)


@pytest.mark.parametrize("name", EXPORTABLE)
def test_hf_to_ours_logits_loss_and_gradients(name: str, tmp_path: Path) -> None:
    ref = hf_model(name, attn="eager")
    ref.save_pretrained(tmp_path)
    ours, cfg = from_hf(tmp_path)
    assert cfg.architecture() == tiny_config(**CONFIGS[name]).architecture()
    ours.eval()
    ids = batch()

    out = ref(input_ids=ids, labels=ids)
    total, count = ours.loss(ids)
    torch.testing.assert_close(ours.logits(ids), out.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(total / count, out.loss, rtol=0, atol=1e-5)

    out.loss.backward()
    (total / count).backward()
    ours_by_name = our_grads_by_hf_name(ours)
    for key, param in ref.named_parameters():
        torch.testing.assert_close(ours_by_name[key], param.grad, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("name", EXPORTABLE)
def test_ours_to_hf_logits_and_greedy_generation(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    ours = Transformer(tiny_config(**CONFIGS[name]))
    randomize(ours, seed=3)
    ours.eval()
    to_hf(ours, tmp_path, bos_id=1, eos_id=2)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa")
    ref.eval()
    ids = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours.logits(ids), ref(input_ids=ids).logits, rtol=0, atol=1e-4)
    prompt = ids[:1, :4]
    expected = ref.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert torch.equal(generate(ours, prompt, 8, temperature=0.0), expected)
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)


def test_tied_export_stores_the_embedding_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ours = Transformer(tiny_config(**CONFIGS["llama-tied"]))
    to_hf(ours, tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert ref.lm_head.weight.data_ptr() == ref.model.embed_tokens.weight.data_ptr()


def test_bias_free_phi_exports_with_zero_biases(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ours = Transformer(tiny_config(bias=False, lm_head_bias=False))
    randomize(ours, seed=4)
    to_hf(ours, tmp_path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = batch()
    with torch.no_grad():
        torch.testing.assert_close(
            ours.eval().logits(ids), ref(input_ids=ids).logits, rtol=0, atol=1e-4
        )


def test_sharded_safetensors_and_bin_checkpoints_load(tmp_path: Path) -> None:
    ref = hf_model("llama-gqa")
    sharded = tmp_path / "sharded"
    ref.save_pretrained(sharded, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*.safetensors"))) > 2
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_text((sharded / "config.json").read_text())
    torch.save(ref.state_dict(), binary / "pytorch_model.bin")
    ids = batch()
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
        for folder in (sharded, binary):
            ours, _ = from_hf(folder)
            torch.testing.assert_close(ours.eval().logits(ids), expected, rtol=0, atol=1e-4)


def test_our_sharded_export_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ours = Transformer(tiny_config(**CONFIGS["phi-qk-layernorm"]))
    to_hf(ours, tmp_path, max_shard_bytes=50_000)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    back, cfg = from_hf(tmp_path)
    assert cfg.architecture() == ours.config.architecture()
    for (name, a), (_, b) in zip(ours.named_parameters(), back.named_parameters()):
        assert torch.equal(a, b), name


# -- errors --------------------------------------------------------------------------------------


def saved(tmp_path: Path, name: str = "phi-rotary-0.5") -> Path:
    hf_model(name).save_pretrained(tmp_path)
    return tmp_path


def one_line(exc: AllllmError) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_missing_unexpected_and_misshapen_keys_give_one_error(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.fc1.weight"]
    tensors["model.layers.0.self_attn.dense.weight"] = torch.zeros(3, 3)
    tensors["model.extra.weight"] = torch.zeros(1)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as err:
        from_hf(folder)
    text = one_line(err.value)
    assert "1 missing (model.layers.1.mlp.fc1.weight)" in text
    assert "1 unexpected (model.extra.weight)" in text
    assert "self_attn.dense.weight [3, 3] (expected [64, 64])" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"},
            "GPT2LMHeadModel is not supported",
        ),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "RoPE scaling 'llama3'"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "RoPE scaling 'yarn'"),
        ({"head_dim": 8}, "head_dim 8 differs"),
        ({"hidden_act": "quick_gelu"}, "hidden_act 'quick_gelu' is not supported"),
        ({"quantization_config": {"quant_method": "gptq"}}, "quantized checkpoints"),
    ],
)
def test_unsupported_configs_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    folder = saved(tmp_path)
    data = json.loads((folder / "config.json").read_text())
    data.update(change)
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(")) as err:
        from_hf(folder)
    one_line(err.value)


def test_missing_folder_and_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such directory"):
        from_hf(tmp_path / "nope")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["PhiForCausalLM"]}))
    with pytest.raises(CheckpointError, match="missing vocab_size, hidden_size"):
        from_hf(tmp_path)
    folder = saved(tmp_path / "model")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        from_hf(folder)


def test_offline_hub_id_says_how_to_use_a_local_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CheckpointError) as err:
        from_hf("someone/not-cached-model")
    text = one_line(err.value)
    assert "someone/not-cached-model" in text and "model.init_from" in text


def test_export_refuses_what_hf_cannot_compute_and_existing_models(tmp_path: Path) -> None:
    mixed = Transformer(tiny_config(**CONFIGS["mixed-rms-gelu-qknorm"]))
    with pytest.raises(ConfigError, match="PhiForCausalLM needs norm='rmsnorm'"):
        to_hf(mixed, tmp_path / "mixed")
    model = Transformer(tiny_config())
    to_hf(model, tmp_path / "once")
    with pytest.raises(CheckpointError, match="already holds a model"):
        to_hf(model, tmp_path / "once")
    to_hf(model, tmp_path / "once", overwrite=True)


# -- model.init_from -----------------------------------------------------------------------------


def test_build_model_from_init_from_and_refusal_of_other_architectures(tmp_path: Path) -> None:
    folder = saved(tmp_path / "ckpt", "llama-gqa")
    cfg = tiny_config(**CONFIGS["llama-gqa"], init_from=str(folder), max_position_embeddings=128)
    loaded = build_model(cfg)
    reference, _ = from_hf(folder)
    for (name, a), (_, b) in zip(loaded.named_parameters(), reference.named_parameters()):
        assert torch.equal(a, b), name
    fresh = build_model(cfg, init_from=None)
    assert not torch.equal(fresh.embed.weight, loaded.embed.weight)

    wrong = tiny_config(**{**CONFIGS["llama-gqa"], "num_kv_heads": 4}, init_from=str(folder))
    with pytest.raises(ConfigError) as err:
        build_model(wrong)
    assert "num_kv_heads: config 4, checkpoint 2" in one_line(err.value)
