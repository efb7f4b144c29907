"""Activation memory (issue 19 item 9): what attention saves for backward, what the loss allocates.

Memory is counted, not timed: the bytes of the distinct storages autograd
saves (each storage once, by its data pointer; parameters and buffers are not
activations and are left out), and the shapes of the tensors the loss's ops
create (a TorchDispatchMode). The expected figures are computed from shapes:
what backward cannot do without.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from allllm.model import IGNORE_INDEX, Transformer, linear_cross_entropy
from model_helpers import randomize, tiny_config


def _saved_storage_bytes(fn: Any, exclude: list[Tensor]) -> int:
    """Bytes of the distinct storages saved for backward while ``fn`` runs (``exclude``'s left out)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_attention_saves_no_more_than_backward_needs(autocast: bool) -> None:
    # phi-like: partial rotary, biases, as many kv heads as heads (CPU flash attention applies)
    cfg = tiny_config(hidden_size=64, num_heads=4, num_layers=1, partial_rotary_factor=0.5)
    torch.manual_seed(0)
    model = Transformer(cfg)
    attn = model.blocks[0].attn
    batch, length, hidden = 2, 32, cfg.hidden_size
    heads, kv, head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    x = torch.randn(batch, length, hidden, requires_grad=True)
    cos, sin = model.rope(0, length)

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        got = _saved_storage_bytes(
            lambda: attn(x, cos, sin), [*model.parameters(), *model.buffers()]
        )

    item = 2 if autocast else 4
    tokens = batch * length
    needed = (
        tokens * hidden  # the qkv projection's input
        + tokens * (heads + kv) * head_dim  # rotated q and k
        + tokens * kv * head_dim  # v
        + tokens * heads * head_dim  # attention output = the out projection's input
    ) * item + batch * heads * length * 4  # attention's fp32 log-sum-exp
    if autocast:  # the bf16 weight copies both projections' backward multiply by
        needed += (attn.qkv.weight.numel() + attn.proj.weight.numel()) * item
    # the fused [B, T, q + k + v] projection output is not among them: held, it adds 3/5 more
    assert got <= needed, f"saved {got} bytes, backward needs {needed}"


class _NewTensors(TorchDispatchMode):
    """Records the shape of every op output that is new memory (not a view or in-place result)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, Tensor)
        }
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.shapes.append(tuple(t.shape))
        return out


def _big_tensors_in_loss(chunk_size: int, autocast: bool) -> int:
    """How many tensors of at least vocab x hidden elements the loss's forward creates."""
    gen = torch.Generator().manual_seed(0)
    rows, hidden, vocab = 32, 48, 640  # a chunk's logits (<= 32 x 640) stay under 640 x 48
    h = torch.randn(rows, hidden, generator=gen, requires_grad=True)
    weight = torch.randn(vocab, hidden, generator=gen, requires_grad=True)
    bias = torch.randn(vocab, generator=gen, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    targets[3] = IGNORE_INDEX
    mode = _NewTensors()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), mode:
        linear_cross_entropy(h, weight, bias, targets, chunk_size=chunk_size)
    return sum(1 for s in mode.shapes if torch.Size(s).numel() >= vocab * hidden)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_chunked_loss_makes_no_vocab_by_hidden_tensor_per_chunk(autocast: bool) -> None:
    one_chunk = _big_tensors_in_loss(chunk_size=32, autocast=autocast)
    four_chunks = _big_tensors_in_loss(chunk_size=8, autocast=autocast)
    # once a forward: the fp32 weight-gradient accumulator, and under autocast the bf16 weight
    assert four_chunks == one_chunk <= (2 if autocast else 1)


def test_bf16_loss_gradients_match_the_plain_loss() -> None:
    """The weight gradient's accumulation under autocast still agrees with F.cross_entropy."""
    model = Transformer(tiny_config(num_layers=1))
    randomize(model, std=0.1)
    ids = torch.randint(0, 101, (2, 24), generator=torch.Generator().manual_seed(1))
    grads = []
    for chunked in (True, False):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if chunked:
                model.loss_chunk_size = 5
                total, _ = model.loss(ids)
            else:
                logits = model.logits(ids).float()[:, :-1].reshape(-1, 101)
                total = torch.nn.functional.cross_entropy(
                    logits, ids[:, 1:].reshape(-1), reduction="sum"
                )
        total.backward()
        grads.append(model.lm_head.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=0.02, atol=0.02)
