"""MFU and tokens/s: the peak table, the PaLM FLOPs count, per-device MFU, saves left out.

A wrong MFU is worse than none (issue 19, item 7): 8 GPUs must not read 8× one GPU's
utilisation, the attention term follows PaLM appendix B exactly, an unknown card gives
no MFU, and the step after a checkpoint does not count the save as training time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from allllm.model.sizes import count_parameters, flops_per_token
from allllm.train.metrics import peak_flops_for_name, step_mfu
from model_helpers import CONFIGS, tiny_config
from train_helpers import make_workspace
from use_helpers import inside


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 SXM5 80GB", 989e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA H200 NVL", 835e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100-SXM4-40GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA A100-PCIE-40GB", 312e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA A10", 125e12),
    ],
)
def test_known_gpus_have_their_dense_peak(name: str, peak: float) -> None:
    assert peak_flops_for_name(name) == peak


@pytest.mark.parametrize(
    "name",
    ["NVIDIA A10G", "NVIDIA L40S", "NVIDIA L40", "NVIDIA GH200 480GB", "Tesla T4", "NVIDIA H100"],
)
def test_unknown_gpus_have_no_peak(name: str) -> None:
    """No MFU rather than a wrong one: the A10G is not the A10, GH200 is not H200."""
    assert peak_flops_for_name(name) is None


def test_a100_is_not_read_as_a10() -> None:
    assert peak_flops_for_name("NVIDIA A100-SXM4-80GB") != 125e12


def test_flops_per_token_is_palm_appendix_b_by_hand() -> None:
    """llama, 2 layers, hidden 64, 4 heads (2 kv), MLP 96, untied, seq 32."""
    cfg = tiny_config(**CONFIGS["llama-gqa"])
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 96 + 2 * 64  # q kv out mlp norms
    embedding = head = 101 * 64
    assert count_parameters(cfg) == embedding + 2 * per_layer + 64 + head
    n = 2 * per_layer + 64 + head  # the lookup is free, the head is a matmul
    assert flops_per_token(cfg, 32) == 6 * n + 12 * 2 * 64 * 32  # no causal discount


def test_a_tied_head_counts_once_as_a_matmul() -> None:
    cfg = tiny_config(**CONFIGS["llama-tied"])
    assert flops_per_token(cfg, 16) == 6 * count_parameters(cfg) + 12 * 2 * 64 * 16


def test_mfu_is_per_device() -> None:
    """Two ranks at 20k tokens/s together are 10k each against one GPU's peak."""
    mfu = step_mfu(20_000.0, 2, 6e9, 989e12)
    assert mfu == pytest.approx(10_000.0 * 6e9 / 989e12)
    assert step_mfu(20_000.0, 1, 6e9, 989e12) == pytest.approx(2 * mfu)


def test_the_step_after_a_checkpoint_does_not_count_the_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each clock read is 1 s of training; a save takes 1000 s: every step reads 1 s."""
    from allllm.config import load_config
    from allllm.data.tokenize.run import tokenize
    from allllm.train import checkpoint as ckpt_io
    from allllm.train import loop, session
    from allllm.train.options import QuietReporter, TrainOptions

    now = [0.0]

    def clock() -> float:
        now[0] += 1.0
        return now[0]

    real_save = ckpt_io.save_checkpoint
    saves = []

    def slow_save(*args: object, **kwargs: object) -> object:
        now[0] += 1000.0
        saves.append(now[0])
        return real_save(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "_clock", clock)
    monkeypatch.setattr(ckpt_io, "save_checkpoint", slow_save)
    monkeypatch.setattr(session, "peak_flops", lambda _device, _precision: 1e12)
    root = make_workspace(tmp_path, n_files=1, words=400, train={"checkpoint_every": 1})
    with inside(root):
        tokenize(load_config(model="micro"))
        session.train(load_config(model="micro"), TrainOptions(only_new=True), QuietReporter())
    lines = (root / "checkpoints/micro/metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) >= 3 and len(saves) >= 2  # saves came between steps
    flops = _flops(root)
    before = 0
    for record in records:
        step_tokens = record["tokens"] - before
        before = record["tokens"]
        assert record["tokens_per_s"] == pytest.approx(step_tokens)  # 1 s, no save in it
        assert record["tokens_per_s_per_device"] == record["tokens_per_s"]  # one process
        assert record["mfu"] == pytest.approx(record["tokens_per_s"] * flops / 1e12)


def _flops(root: Path) -> float:
    from allllm.config import load_config

    with inside(root):
        cfg = load_config(model="micro")
    return flops_per_token(cfg.model, cfg.data.seq_len)
