"""Activation memory of one decoder block and of the chunked loss at phi-2 width (issue 19 item 9).

Counted, not timed. Shapes: hidden 2560, 32 heads (head_dim 80, rotary 32),
intermediate 10240, vocab 51200, seq 2048, micro batch 1 — one block, not 32.

- Block (CPU, real data): the bytes of the distinct storages autograd saves
  for backward (each storage once, by data pointer; parameters and buffers
  left out), for the attention alone and the whole block, fp32 and bf16
  autocast (bf16 matmuls are slow on CPUs without bf16 units: ~20 s here).
  Against it: the minimum computed from shapes, and whether the fused qkv
  output ``[B, T, 3H]`` is among the saved storages, with its share of the
  block's saved bytes had it been held (as it was before this change: v, a
  view of it, kept it alive until backward).
- Loss (fake tensors: CPU shapes and dtypes, no data, no FLOPs; the matmuls
  at vocab 51200 would take minutes): ``linear_cross_entropy``'s saved bytes
  against what its backward needs (the gradients the forward already
  computed), and the tensors its forward creates — any of vocab x hidden
  elements, the largest other. fp32, and under bf16 autocast.

Before/after cannot be shown in one run; run it on both commits to compare.

    python benchmarks/bench_activation_memory.py [--seq 2048] [--threads 2] [--dtypes fp32 bf16]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from _machine import machine_description
from allllm.config import ModelConfig
from allllm.model.layers import Block, Rotary
from allllm.model.loss import _chunk_rows, linear_cross_entropy

MIB = 2**20


def phi2_width(seq: int) -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "arch": "phi",
            "vocab_size": 51200,
            "hidden_size": 2560,
            "num_layers": 1,
            "num_heads": 32,
            "intermediate_size": 10240,
            "partial_rotary_factor": 0.4,
            "max_position_embeddings": seq,
        }
    )


def _key(t: Tensor) -> int:
    """A storage's identity: its data pointer, or for a fake tensor (no data) its StorageImpl."""
    storage = t.untyped_storage()
    return storage._cdata if isinstance(t, FakeTensor) else storage.data_ptr()  # type: ignore[attr-defined]


def saved_storages(fn: Callable[[], object], exclude: list[Tensor]) -> dict[int, int]:
    """``{storage: bytes}`` of what autograd saves while ``fn`` runs, ``exclude``'s left out."""
    skip = {_key(t) for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        if _key(t) not in skip:
            seen[_key(t)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return seen


def attention_minimum(cfg: ModelConfig, tokens: int, item: int, autocast: bool) -> int:
    """Bytes attention's backward needs: its input, q/k, v, output, fp32 lse (+ bf16 weights)."""
    heads, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    elements = tokens * (cfg.hidden_size + (heads + kv) * d + kv * d + heads * d)
    weights = (heads + 2 * kv) * d * cfg.hidden_size + cfg.hidden_size * heads * d
    return elements * item + heads * tokens * 4 + (weights * item if autocast else 0)


def mlp_and_norm_minimum(cfg: ModelConfig, tokens: int, item: int, autocast: bool) -> int:
    """Bytes the rest of a phi block needs: the norm's fp32 input and stats, fc1's output, gelu's.

    fc1 reads the same normed input as attention's qkv, so it adds nothing
    more in fp32; under autocast the bf16 copy of it could be shared too.
    """
    h, inter = cfg.hidden_size, cfg.intermediate_size
    norm = tokens * h * 4 + 2 * tokens * 4
    mlp = 2 * tokens * inter * item + (2 * h * inter * item if autocast else 0)
    return norm + mlp


def bench_block(cfg: ModelConfig, seq: int, autocast: bool) -> None:
    torch.manual_seed(0)
    block, rope = Block(cfg, 0), Rotary(cfg)
    x = torch.randn(1, seq, cfg.hidden_size, requires_grad=True)
    cos, sin = rope(0, seq)
    exclude = [*block.parameters(), *rope.buffers()]
    fused: list[Tensor] = []
    hook = block.attn.qkv.register_forward_hook(lambda _m, _i, out: fused.append(out))
    item = 2 if autocast else 4
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        h = block.norm1(x).detach().requires_grad_()
        attn = saved_storages(lambda: block.attn(h, cos, sin), exclude)
        whole = saved_storages(lambda: block(x, cos, sin), exclude)
    hook.remove()
    qkv = fused[-1]
    qkv_bytes = qkv.untyped_storage().nbytes()
    held = _key(qkv) in whole
    attn_min = attention_minimum(cfg, seq, item, autocast)
    block_min = attn_min + mlp_and_norm_minimum(cfg, seq, item, autocast)
    attn_bytes, block_bytes = sum(attn.values()), sum(whole.values())
    v_copy = seq * cfg.num_kv_heads * cfg.head_dim * item
    before = block_bytes if held else block_bytes - v_copy + qkv_bytes
    name = "bf16 autocast" if autocast else "fp32"
    print(f"\none block, {name}, seq {seq}, micro batch 1 (saved for backward, MiB):")
    print(f"  attention  {attn_bytes / MIB:8.1f}   minimum {attn_min / MIB:8.1f}")
    print(f"  block      {block_bytes / MIB:8.1f}   minimum {block_min / MIB:8.1f}")
    print(
        f"  fused qkv output {qkv_bytes / MIB:.1f} MiB, held until backward: {'yes' if held else 'no'};"
        f" if held {qkv_bytes / before:.1%} of the block's saved bytes"
        f" (net of the v copy: {(before - block_bytes) / before:.1%} saved)"
    )
    if autocast:  # bf16 copies of the four weight matrices, saved once a forward whatever T
        weights = sum(p.numel() for p in block.parameters() if p.dim() == 2) * item
        print(
            f"  of which bf16 weight copies {weights / MIB:.1f} MiB; without them the qkv output"
            f" is {qkv_bytes / (before - weights):.1%},"
            f" the net saving {(before - block_bytes) / (before - weights):.1%}"
        )


class NewTensors(TorchDispatchMode):
    """The shapes and bytes of every op output that is new memory (not a view, not in place)."""

    def __init__(self) -> None:
        super().__init__()
        self.created: list[tuple[tuple[int, ...], int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        inputs = {_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, Tensor) and _key(t) not in inputs:
                self.created.append((tuple(t.shape), t.untyped_storage().nbytes()))
        return out


def bench_loss(cfg: ModelConfig, seq: int, autocast: bool) -> None:
    vocab, hidden = cfg.vocab_size, cfg.hidden_size
    rows = _chunk_rows(vocab, None)
    chunks = -(-seq // rows)
    with FakeTensorMode():
        h = torch.empty(seq, hidden, requires_grad=True)
        weight = torch.empty(vocab, hidden, requires_grad=True)
        bias = torch.empty(vocab, requires_grad=True)
        targets = torch.zeros(seq, dtype=torch.long)
        mode = NewTensors()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), mode:
            saved = saved_storages(
                lambda: linear_cross_entropy(h, weight, bias, targets), [h, weight, bias]
            )
    minimum = seq * hidden * 4 + vocab * hidden * 4 + vocab * 4  # grad_h, grad_w, grad_b
    big = [s for s, _ in mode.created if torch.Size(s).numel() >= vocab * hidden]
    per_chunk = [c for c in mode.created if torch.Size(c[0]).numel() < vocab * hidden]
    largest = max(per_chunk, key=lambda c: c[1])
    print(
        f"\nloss, {'bf16 autocast' if autocast else 'fp32'}, {seq} positions,"
        f" {chunks} chunks of {rows} rows (fake tensors):"
    )
    print(
        f"  saved for backward {sum(saved.values()) / MIB:8.1f} MiB"
        f"   minimum {minimum / MIB:8.1f} MiB (its gradients, computed in the forward)"
    )
    print(
        f"  tensors of >= vocab x hidden elements made: {len(big)} {big}"
        f" (allowed once a forward: the fp32 accumulator, the bf16 weight)"
    )
    print(f"  largest other temporary: {largest[0]} {largest[1] / MIB:.1f} MiB")
    print(f"  one chunk's fp32 logits: {rows * vocab * 4 / MIB:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_description()}, torch {torch.__version__}")
    cfg = phi2_width(args.seq)
    for name in args.dtypes:
        bench_block(cfg, args.seq, autocast=name == "bf16")
    for name in args.dtypes:
        bench_loss(cfg, args.seq, autocast=name == "bf16")


if __name__ == "__main__":
    main()
