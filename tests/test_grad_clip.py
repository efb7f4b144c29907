"""The global gradient norm: clip_grad_norm_'s answer in one process, the same under FSDP2.

Issue 19, item 8: on torch 2.5–2.9 ``clip_grad_norm_`` over FSDP2 shards returns a
rank-local norm. :mod:`allllm.train.grad_clip` sums the shards' squares over the
ranks itself; two gloo ranks here must see the norm (and clipped gradients) of one
process training the same model on the same batch.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from allllm.config import TrainConfig
from allllm.model import Transformer
from allllm.train.distributed import DistInfo
from allllm.train.grad_clip import clip_gradients, grad_norm
from model_helpers import CONFIGS, tiny_config

CPU = torch.device("cpu")


def _model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny_config(**CONFIGS["llama-gqa"]))


def _batch() -> torch.Tensor:
    return torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(1))


def _backward(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    loss_sum, count = model(_batch())
    (loss_sum / count).backward()
    return [p for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("max_norm", [1e-3, 0.5, float("inf")])
def test_one_process_matches_clip_grad_norm(max_norm: float) -> None:
    model = _model()
    params = _backward(model)
    ref_params = _backward(_model())  # the same weights and batch: the same gradients
    expected = torch.nn.utils.clip_grad_norm_(ref_params, max_norm)
    norm = clip_gradients(params, max_norm, DistInfo(), CPU)
    torch.testing.assert_close(torch.tensor(norm, dtype=torch.float32), expected)
    for mine, theirs in zip(params, ref_params, strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad)


def test_a_non_finite_gradient_gives_a_non_finite_norm_and_no_scaling() -> None:
    model = _model()
    params = _backward(model)
    params[0].grad.view(-1)[0] = float("nan")  # type: ignore[union-attr]
    before = params[1].grad.clone()  # type: ignore[union-attr]
    assert not torch.isfinite(torch.tensor(clip_gradients(params, 1e-3, DistInfo(), CPU)))
    assert torch.equal(params[1].grad, before)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fsdp_rank(rank: int, port: int, out: str) -> None:
    """One of two FSDP2 ranks: the same batch on both, so the mean gradient is one process's."""
    from allllm.train.parallelize import parallelize

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        info = DistInfo(rank=rank, world_size=2)
        model = parallelize(_model(), TrainConfig(fsdp=True), info)
        params = _backward(model)
        unclipped = grad_norm(params, info, CPU)
        norm = clip_gradients(params, 1e-3, info, CPU)
        grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}  # type: ignore[union-attr]
        if rank == 0:
            torch.save({"unclipped": unclipped, "norm": norm, "grads": grads}, out)
    finally:
        dist.destroy_process_group()


def test_fsdp2_two_ranks_see_the_one_process_norm(tmp_path: Path) -> None:
    out = tmp_path / "rank0.pt"
    mp.spawn(_fsdp_rank, args=(_free_port(), str(out)), nprocs=2, join=True)
    got = torch.load(out)
    model = _model()
    params = _backward(model)
    expected = float(torch.nn.utils.clip_grad_norm_(params, 1e-3))
    assert got["norm"] == pytest.approx(expected, rel=1e-5)
    assert got["unclipped"] == pytest.approx(expected, rel=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-4, atol=1e-8)
