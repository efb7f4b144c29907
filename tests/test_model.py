"""Our Transformer on its own: sizes, loss, padding, checkpointing, KV cache, generation.

Equality with transformers' reference models is in test_hf_bridge.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from allllm.config import parse_config
from allllm.hf import build_model
from allllm.model import (
    IGNORE_INDEX,
    KVCache,
    Transformer,
    generate,
    linear_cross_entropy,
    sample_next,
    shifted_targets,
)
from allllm.model.sizes import count_parameters, flops_per_token
from allllm.train.parallelize import checkpoint_block
from model_helpers import CONFIGS, randomize, tiny_config

REPO = Path(__file__).resolve().parents[1]


def make_model(name: str, seed: int = 0, **extra: object) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(tiny_config(**{**CONFIGS[name], **extra}))
    randomize(model, seed)
    return model


# -- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_num_parameters_equals_config_count(name: str) -> None:
    model = make_model(name)
    assert model.num_parameters() == count_parameters(model.config)
    assert model.flops_per_token(32) == flops_per_token(model.config, 32) > 0


@pytest.mark.parametrize(
    ("preset", "params"),
    [("smollm2-135m", 134_515_008), ("tinyllama-1.1b", 1_100_048_384), ("phi-2", 2_779_683_840)],
)
def test_presets_have_the_published_sizes(preset: str, params: int) -> None:
    data = json.loads((REPO / "configs" / f"{preset}.json").read_text())
    cfg = parse_config(data, preset)
    assert count_parameters(cfg.model) == params


def test_fresh_init_scales_residual_projections() -> None:
    torch.manual_seed(0)
    cfg = tiny_config(num_layers=8, hidden_size=128)
    model = Transformer(cfg)
    block = model.blocks[0]
    assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert block.attn.proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.1)
    assert block.mlp.fc2.weight.std().item() == pytest.approx(0.02 / 4, rel=0.1)
    assert torch.count_nonzero(block.attn.qkv.bias) == 0
    assert torch.count_nonzero(model.lm_head.bias) == 0
    assert torch.all(block.norm1.weight == 1)


def test_build_model_fresh_init_is_seeded() -> None:
    cfg = tiny_config(**CONFIGS["llama-gqa"])
    models = []
    for _ in range(2):
        torch.manual_seed(11)
        models.append(build_model(cfg, init_from=None))
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
        assert torch.equal(a, b), name
    assert models[0].blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.15)


def test_tied_model_stores_the_matrix_once() -> None:
    model = make_model("llama-tied")
    assert model.head_weight is model.embed.weight
    assert "lm_head.weight" not in model.state_dict()


def test_importing_the_package_does_not_import_torch() -> None:
    code = "import sys, allllm.model; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- loss ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_bias", [True, False])
def test_chunked_cross_entropy_equals_plain(with_bias: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    f64 = {"dtype": torch.float64, "generator": gen, "requires_grad": True}  # exact comparison
    hidden = torch.randn(23, 16, **f64)
    weight = torch.randn(37, 16, **f64)
    bias = torch.randn(37, **f64) if with_bias else None
    targets = torch.randint(0, 37, (23,), generator=gen)
    targets[[0, 5, 22]] = IGNORE_INDEX

    total, count = linear_cross_entropy(hidden, weight, bias, targets, chunk_size=5)
    (2.0 * total).backward()
    ours = [t.grad.clone() for t in (hidden, weight, bias) if t is not None]
    for t in (hidden, weight, bias):
        if t is not None:
            t.grad = None
    ref = F.cross_entropy(
        F.linear(hidden, weight, bias), targets, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    (2.0 * ref).backward()
    assert count.item() == 20
    torch.testing.assert_close(total, ref, rtol=1e-12, atol=1e-10)
    for got, t in zip(ours, [t for t in (hidden, weight, bias) if t is not None]):
        torch.testing.assert_close(got, t.grad, rtol=1e-12, atol=1e-10)
    with torch.no_grad():  # the evaluation path computes no gradients, same value
        value, _ = linear_cross_entropy(hidden, weight, bias, targets, chunk_size=4)
    torch.testing.assert_close(value, ref.detach(), rtol=1e-12, atol=1e-10)


def test_model_loss_is_the_causal_lm_loss_over_valid_positions() -> None:
    model = make_model("phi-rotary-0.5")
    model.loss_chunk_size = 7
    ids = torch.randint(0, 101, (3, 12), generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([12, 5, 1])
    total, count = model.loss(ids, lengths)
    logits = model.logits(ids)
    targets = shifted_targets(ids, lengths)
    expected = F.cross_entropy(logits.view(-1, 101), targets.view(-1), reduction="sum")
    assert count.item() == 11 + 4 + 0
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-4)


def test_padded_batch_gives_the_loss_of_the_unpadded_rows() -> None:
    model = make_model("llama-gqa")
    gen = torch.Generator().manual_seed(2)
    rows = [torch.randint(0, 101, (n,), generator=gen) for n in (16, 9, 4)]
    padded = torch.full((3, 16), 7)  # pad id 7: any id, it is never a target
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    lengths = torch.tensor([len(r) for r in rows])
    mask = torch.arange(16)[None, :] < lengths[:, None]

    by_length = model.loss(padded, lengths)
    by_mask = model.loss(padded, mask=mask.long())
    singles = [model.loss(row[None, :]) for row in rows]
    expected_sum = sum(s for s, _ in singles)
    expected_count = sum(int(c) for _, c in singles)
    for total, count in (by_length, by_mask):
        assert int(count) == expected_count == 15 + 8 + 3
        torch.testing.assert_close(total, expected_sum, rtol=1e-5, atol=1e-4)


def test_activation_checkpointing_gives_identical_gradients() -> None:
    ids = torch.randint(0, 101, (2, 16), generator=torch.Generator().manual_seed(3))
    grads = []
    for recompute in (False, True):
        model = make_model("phi-qk-layernorm", dropout=0.1)  # dropout: RNG must replay too
        model.train()
        if recompute:
            for block in model.blocks:
                checkpoint_block(block)
        torch.manual_seed(5)
        total, count = model.loss(ids)
        (total / count).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=0, atol=0, msg=name)


def test_compiles_with_checkpointing_and_bf16_autocast() -> None:
    model = make_model("llama-tied")
    for block in model.blocks:
        checkpoint_block(block)
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(4))
    eager_total, _ = model.loss(ids)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    total, count = compiled(ids)
    (total / count).backward()
    torch.testing.assert_close(total, eager_total, rtol=1e-6, atol=1e-5)
    assert all(p.grad is not None for p in model.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_total, _ = compiled(ids)
        logits = model.logits(ids)
    assert logits.dtype == torch.bfloat16
    assert bf16_total.dtype == torch.float32
    torch.testing.assert_close(bf16_total, eager_total, rtol=0.05, atol=0.0)


# -- KV cache and generation -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["phi-rotary-0.4", "llama-gqa", "phi-qk-layernorm"])
def test_cached_decoding_gives_the_full_forward_logits(name: str) -> None:
    model = make_model(name).eval()
    ids = torch.randint(0, 101, (2, 14), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = model.logits(ids)
        cache = KVCache(model.config, batch=2, max_len=14)
        parts = [model.logits(ids[:, :6], cache=cache)]  # prefill
        parts.append(model.logits(ids[:, 6:10], cache=cache))  # a chunk after cached positions
        parts += [model.logits(ids[:, t : t + 1], cache=cache) for t in range(10, 14)]  # decode
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-4)
    assert cache.pos == 14


@pytest.mark.parametrize("name", ["phi-rotary-0.5", "llama-tied"])
def test_generation_with_cache_equals_generation_without(name: str) -> None:
    model = make_model(name)
    prompt = torch.randint(0, 101, (2, 5), generator=torch.Generator().manual_seed(6))
    streamed: list[torch.Tensor] = []
    cached = generate(model, prompt, 20, temperature=0.0, on_token=streamed.append)
    uncached = generate(model, prompt, 20, temperature=0.0, use_cache=False)
    assert torch.equal(cached, uncached)
    assert cached.shape == (2, 25) and torch.equal(cached[:, :5], prompt)
    assert torch.equal(torch.stack(streamed, dim=1), cached[:, 5:])
    sampled = [
        generate(model, prompt[0], 10, 0.8, 20, 0.9, torch.Generator().manual_seed(9), use_cache=c)
        for c in (True, False)
    ]
    assert sampled[0].shape == (15,) and torch.equal(sampled[0], sampled[1])
    assert model.training  # generate restores the mode it found


def test_generation_stops_when_every_row_emitted_eos() -> None:
    model = make_model("phi-tied")
    prompt = torch.randint(0, 101, (1, 4), generator=torch.Generator().manual_seed(7))
    first = generate(model, prompt, 1, temperature=0.0)[0, -1].item()
    out = generate(model, prompt, 30, temperature=0.0, eos_id=first)
    assert out.shape == (1, 5) and out[0, -1].item() == first


def test_sampling_filters() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9], [5.0, 0.0, 0.0, 0.0]])
    gen = torch.Generator().manual_seed(0)
    assert sample_next(logits, 0.0).tolist() == [1, 0]
    assert sample_next(logits, 1.0, top_k=1, generator=gen).tolist() == [1, 0]
    assert sample_next(logits, 1.0, top_p=0.01, generator=gen).tolist() == [1, 0]
    picks = {int(sample_next(logits, 1.0, top_k=2, generator=gen)[0]) for _ in range(50)}
    assert picks == {1, 3}


def test_rotary_tables_grow_and_stay_fp32() -> None:
    model = make_model("llama-gqa", max_position_embeddings=16).eval()
    ids = torch.randint(0, 101, (1, 40), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        long = model.logits(ids)  # beyond the table: it grows (HF computes any position too)
        torch.testing.assert_close(long[:, :16], model.logits(ids[:, :16]), rtol=1e-5, atol=1e-5)
        cached = generate(model, ids[:, :10], 30, temperature=0.0)
        assert torch.equal(cached, generate(model, ids[:, :10], 30, 0.0, use_cache=False))
        model.to(torch.bfloat16)  # casts the buffers; the tables are rebuilt in fp32
        assert model.logits(ids).dtype == torch.bfloat16
    assert model.rope.cos.dtype == torch.float32 and model.rope.cos.shape[0] >= 40
