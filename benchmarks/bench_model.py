"""Training and forward speed of our Transformer against transformers' PhiForCausalLM (issue 5).

CPU (default): the `tiny` preset (phi-style, hidden 256, 4 layers, seq 256,
micro batch 8). Both models get the identical config and weights (ours is
exported with to_hf and loaded by from_pretrained, attn_implementation="sdpa"),
the same batch, thread count, AdamW and loop. Runs are interleaved; each
figure is the median of --repeats runs of --steps steps after a warm-up step.

    python benchmarks/bench_model.py [--threads 2] [--repeats 5] [--steps 5]
        [--with-fast-gelu] [--with-compile]

--with-compile adds both models under torch.compile (a C++ compiler is needed):
the floor that fusing every elementwise chain reaches with the same matmul and
attention kernels.

GPU: `--device cuda` trains a ~125M and a ~1B phi-style model (seq 2048) in
bf16 autocast, ours eager and torch.compile'd, HF eager-mode for contrast, and
prints tokens/s and MFU against the H100's dense bf16 peak (989 TFLOP/s;
change with --peak-tflops).

    python benchmarks/bench_model.py --device cuda [--sizes 125m 1b]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from _machine import machine_description
from allllm.config import ModelConfig, load_config_file
from allllm.hf import to_hf
from allllm.model import Transformer

ROOT = Path(__file__).resolve().parent.parent
LossFn = Callable[[torch.Tensor], torch.Tensor]

GPU_SIZES = {  # phi-style configs (phi-1.5's layout: head_dim 64, half of it rotary)
    "125m": {
        "hidden_size": 768,
        "num_layers": 12,
        "num_heads": 12,
        "tie_word_embeddings": True,
        "micro_batch": 8,
    },
    "1b": {"hidden_size": 2048, "num_layers": 16, "num_heads": 32, "micro_batch": 4},
}


def hf_twin(model: Transformer, attn: str, device: str) -> torch.nn.Module:
    """transformers' model with our model's config and weights (through to_hf)."""
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        to_hf(model, tmp)
        hf = AutoModelForCausalLM.from_pretrained(tmp, attn_implementation=attn)
    return hf.to(device)


def ours_step(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def loss(ids: torch.Tensor) -> torch.Tensor:
        total, count = model(ids)
        return total / count

    return loss


def hf_step(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def loss(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, labels=ids).loss

    return loss


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_training(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    opt: torch.optim.Optimizer,
    ids: torch.Tensor,
    steps: int,
    device: str,
    autocast: bool,
) -> float:
    """Seconds per optimizer step (after one warm-up step)."""
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(ids)
        loss.backward()
        opt.step()

    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def time_forward(
    model: torch.nn.Module, ids: torch.Tensor, steps: int, device: str, autocast: bool, hf: bool
) -> float:
    """Seconds per forward pass producing logits (eval mode)."""
    model.eval()

    def fwd() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            model(input_ids=ids) if hf else model.logits(ids)

    fwd()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fwd()
    sync(device)
    return (time.perf_counter() - start) / steps


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)


def run_cpu(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    cfg = load_config_file(ROOT / "configs" / "tiny.json")
    mcfg, seq, batch = cfg.model, cfg.data.seq_len, cfg.train.micro_batch_size
    torch.manual_seed(0)
    ours = Transformer(mcfg)
    hf = hf_twin(ours, "sdpa", "cpu")
    # name -> (module the optimizer trains, training loss fn, module timed forward, is HF)
    contenders: dict[str, tuple[torch.nn.Module, LossFn, torch.nn.Module, bool]] = {
        "ours": (ours, ours_step(ours), ours, False),
        "HF Phi sdpa": (hf, hf_step(hf), hf, True),
    }
    if args.with_fast_gelu:  # HF with the fused tanh-GELU kernel instead of phi-2's gelu_new
        fast = hf_twin(ours, "sdpa", "cpu")
        fast.config.hidden_act = "gelu_pytorch_tanh"
        from transformers.activations import ACT2FN

        for layer in fast.model.layers:
            layer.mlp.activation_fn = ACT2FN["gelu_pytorch_tanh"]
        contenders["HF Phi sdpa, gelu_pytorch_tanh"] = (fast, hf_step(fast), fast, True)
    if args.with_compile:  # both under torch.compile (inductor's fused CPU kernels)
        ours_c = Transformer(mcfg)
        ours_c.load_state_dict(ours.state_dict())
        hf_c = hf_twin(ours, "sdpa", "cpu")
        ours_cc, hf_cc = torch.compile(ours_c), torch.compile(hf_c)
        contenders["ours + torch.compile"] = (ours_c, ours_step(ours_cc), ours_cc, False)
        contenders["HF Phi sdpa + torch.compile"] = (hf_c, hf_step(hf_cc), hf_cc, True)
    ids = torch.randint(
        0, mcfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1)
    )
    train: dict[str, list[float]] = {name: [] for name in contenders}
    fwd: dict[str, list[float]] = {name: [] for name in contenders}
    opts = {name: make_optimizer(m) for name, (m, _, _, _) in contenders.items()}
    for _ in range(args.repeats):  # interleaved: drifts in machine load hit every contender
        for name, (model, loss_fn, fwd_model, is_hf) in contenders.items():
            train[name].append(
                time_training(model, loss_fn, opts[name], ids, args.steps, "cpu", False)
            )
            fwd[name].append(time_forward(fwd_model, ids, args.steps, "cpu", False, is_hf))
    tokens = batch * seq
    base_train = statistics.median(train["HF Phi sdpa"])
    base_fwd = statistics.median(fwd["HF Phi sdpa"])
    print(f"machine: {machine_description()}; torch {torch.__version__}, threads {args.threads}")
    print(
        f"config: configs/tiny.json (hidden {mcfg.hidden_size}, {mcfg.num_layers} layers, "
        f"seq {seq}, micro batch {batch}); median of {args.repeats} x {args.steps} steps"
    )
    print("| model | train tokens/s | vs HF | forward ms | vs HF |")
    print("|---|---|---|---|---|")
    for name in contenders:
        t, f = statistics.median(train[name]), statistics.median(fwd[name])
        print(
            f"| {name} | {tokens / t:,.0f} | {base_train / t:.2f}x | {1000 * f:.1f} | "
            f"{base_fwd / f:.2f}x |"
        )


def gpu_config(size: str) -> tuple[ModelConfig, int]:
    spec = dict(GPU_SIZES[size])
    micro_batch = spec.pop("micro_batch")
    base = json.loads((ROOT / "configs" / "phi-1_5.json").read_text())["model"]
    base.update(spec, intermediate_size=4 * spec["hidden_size"], num_kv_heads=spec["num_heads"])
    return ModelConfig.model_validate(base), micro_batch


def run_gpu(args: argparse.Namespace) -> None:
    device, seq, peak = args.device, args.seq_len, args.peak_tflops * 1e12
    print(
        f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}; bf16 autocast; seq {seq}"
    )
    print("| model | params | implementation | tokens/s | MFU |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        mcfg, batch = gpu_config(size)
        torch.manual_seed(0)
        ours = Transformer(mcfg).to(device)
        ids = torch.randint(0, mcfg.vocab_size, (batch, seq), device=device)
        runs: list[tuple[str, torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]] = [
            ("ours", ours, ours_step(ours)),
            ("ours + torch.compile", ours, ours_step(torch.compile(ours))),
        ]
        if not args.skip_hf:
            hf = hf_twin(ours.cpu(), "sdpa", device)
            ours.to(device)
            runs.append(("HF Phi sdpa", hf, hf_step(hf)))
            del hf  # the list holds it until this size is done
        for name, model, loss_fn in runs:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            times = [
                time_training(model, loss_fn, opt, ids, args.steps, device, True)
                for _ in range(args.repeats)
            ]
            tps = batch * seq / statistics.median(times)
            mfu = tps * ours.flops_per_token(seq) / peak
            print(
                f"| {size} | {ours.num_parameters() / 1e6:.0f}M | {name} | {tps:,.0f} | {mfu:.1%} |"
            )
            del opt
            torch.cuda.empty_cache()
        del ours, runs
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--with-fast-gelu", action="store_true", help="also HF with gelu_pytorch_tanh"
    )
    parser.add_argument(
        "--with-compile",
        action="store_true",
        help="CPU: also both models under torch.compile (needs a C++ compiler)",
    )
    parser.add_argument("--sizes", nargs="+", default=list(GPU_SIZES), choices=list(GPU_SIZES))
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--skip-hf", action="store_true", help="GPU: only time our model")
    args = parser.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA device visible")
        run_gpu(args)
    else:
        run_cpu(args)


if __name__ == "__main__":
    main()
