"""`allllm train` against a plain transformers training loop, and its per-step breakdown (issue 6).

CPU (default): the `tiny` preset trains on the Shakespeare corpus, tokenized
into a temporary workspace. Contenders, interleaved with a rotating order:

- "allllm train": the real ``allllm.train.session.train()`` with
  ``--max-steps N`` (a fresh checkpoint dir per run, so every run starts from the
  same weights and trains the same rows). Tokens/s come from its metrics.jsonl,
  after --warmup steps; the set-up and the checkpoint at the bound are timed apart.
- "allllm train, fused AdamW": the same with the trainer's optimizer swapped
  for ``torch.optim.AdamW(fused=True)`` (the trainer itself now fuses on CPU too, so the two
  rows should agree).
- "allllm train, train.compile" (with --with-compile): the same run with the
  config's ``train.compile`` on (no forward/backward timers: they would sit
  inside the compiled graph). The first steps, which compile, are warm-up.
- "allllm's model in the plain loop": our Transformer in the loop below — the
  trainer's own cost is its difference to "allllm train".
- "plain HF loop": what a user would write: ``PhiForCausalLM``
  (attn_implementation="sdpa", the tiny config in HF terms, ``gelu_new``, the
  same initial weights), ``torch.optim.AdamW`` (default foreach) with the same
  lr per step, betas and weight decay, ``labels=input_ids``, micro-batches of 8
  accumulated into batches of 16 rows of 256, ``clip_grad_norm_(1.0)``, reading
  the very rows allllm trained (recorded from its ``ShardDataset.fetch`` calls)
  from the same ``.bin`` shard with ``np.memmap``. Same process, same threads.

The breakdown (fetch / forward / backward / clip / optimizer / other, ms per
step) is measured inside the real loop by wrapping ``ShardDataset.fetch``,
``Tensor.backward``, ``clip_grad_norm_`` and hooking the model's forward and
the optimizer's step for the length of each ``train()`` call. The machine may
be shared: every step's process CPU time is recorded, and figures are given
both as medians of whole runs and over the "quiet" steps (CPU share >= 0.95).

    python benchmarks/bench_train.py [--threads 2] [--repeats 5] [--steps 13] [--warmup 3]
        [--with-compile]

GPU: ``--device cuda`` trains ~125M and ~1B phi-style models (bench_model.py's
configs, seq 2048) through the real ``train()`` in bf16 autocast with
``torch.compile`` and prints tokens/s and MFU (against --peak-tflops, the
H100's dense bf16 989 by default). ``--sizes`` without ``--device cuda`` runs
the same path on CPU (a smoke test: add --seq-len 128 --micro-batch 1 --accum 1
--steps 3 --warmup 1 --no-compile).

    python benchmarks/bench_train.py --device cuda [--sizes 125m 1b] [--accum 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _machine import machine_description
from _train_harness import (
    CORPUS,
    PHASES,
    QUIET,
    ROOT,
    StepClock,
    StepTiming,
    TrainRun,
    fused_adamw,
    phase_means,
    prepare_workspace,
    run_ours,
    workspace_config,
)
from allllm.config import Config
from allllm.model.sizes import count_parameters, flops_per_token

PLAIN = "plain HF loop"
PLAIN_OURS = "allllm's model in the plain loop"
BENCH_TRAIN = {"checkpoint_every": 10**6, "eval_every": 10**6}  # only the final save, timed apart
COMPILED = "allllm train, train.compile"


# -- the plain transformers loop ------------------------------------------------------------------


def plain_hf_model(cfg: Config) -> torch.nn.Module:
    """``PhiForCausalLM`` with the config in HF terms and the weights ``train()`` starts from."""
    from transformers import PhiConfig, PhiForCausalLM

    from allllm.hf import build_model
    from allllm.hf.weights_out import hf_state_dict

    m = cfg.model
    hf_cfg = PhiConfig(
        vocab_size=m.vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads,
        max_position_embeddings=m.max_position_embeddings,
        rope_theta=m.rope_theta,
        partial_rotary_factor=m.partial_rotary_factor,
        layer_norm_eps=m.norm_eps,
        hidden_act="gelu_new",  # phi-2's activation, as its config.json names it
        tie_word_embeddings=m.tie_word_embeddings,
        attn_implementation="sdpa",
    )
    model = PhiForCausalLM(hf_cfg)
    if model.config._attn_implementation != "sdpa":
        raise SystemExit(f"HF picked attention {model.config._attn_implementation!r}, not sdpa")
    torch.manual_seed(cfg.train.seed)  # what train() does before building a fresh model
    model.load_state_dict(hf_state_dict(build_model(m, init_from=None)))
    return model


@dataclass
class PlainRun:
    tokens_per_s: float
    breakdown: dict[str, float]
    cpu_share: float
    quiet: list[StepTiming]
    losses: list[float]


def hf_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids).loss


def ours_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    total, count = model(ids)
    return total / count


def plain_ours_model(cfg: Config) -> torch.nn.Module:
    """allllm's Transformer with the weights ``train()`` starts from (for the same plain loop)."""
    from allllm.hf import build_model

    torch.manual_seed(cfg.train.seed)
    return build_model(cfg.model, init_from=None)


def run_plain_loop(
    cfg: Config,
    shard_bin: Path,
    micro_rows: list[np.ndarray],
    lrs: list[float],
    warmup: int,
    *,
    ours: bool = False,
) -> PlainRun:
    """The user's loop over the same micro-batches (rows) and learning rates as allllm's run.

    ``ours`` puts allllm's model (and nothing else of allllm) into the same loop, which
    separates the model's speed from the trainer's per-step costs.
    """
    train, seq = cfg.train, cfg.data.seq_len
    meta = json.loads(
        shard_bin.with_name(shard_bin.name[: -len(".bin")] + ".meta.json").read_text()
    )
    data = np.memmap(shard_bin, dtype=meta["dtype"], mode="r").reshape(-1, seq)
    model = plain_ours_model(cfg) if ours else plain_hf_model(cfg)
    loss_of = ours_loss if ours else hf_loss
    opt = torch.optim.AdamW(
        model.parameters(), lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay
    )
    accum = -(-train.batch_size // train.micro_batch_size)
    clock, losses, tokens = StepClock(), [], []
    model.train()
    clock.begin()
    for step, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        total, n_tokens = 0.0, 0
        for rows in micro_rows[step * accum : (step + 1) * accum]:
            with clock.timing("fetch"):
                ids = torch.from_numpy(data[rows].astype(np.int64))
            with clock.timing("forward"):
                loss = loss_of(model, ids) / accum
            with clock.timing("backward"):
                loss.backward()
            total += loss.item()
            n_tokens += ids.numel()
        with clock.timing("clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        with clock.timing("optimizer"):
            opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
        tokens.append(n_tokens)
        clock.step_done(n_tokens)
    kept = clock.steps[warmup:]
    return PlainRun(
        tokens_per_s=sum(tokens[warmup:]) / sum(s.seconds for s in kept),
        breakdown=phase_means(clock.steps[warmup:]),
        cpu_share=clock.cpu_share(warmup, torch.get_num_threads()),
        quiet=clock.quiet_steps(warmup, torch.get_num_threads()),
        losses=losses,
    )


# -- CPU: tiny, allllm against the plain loop ---------------------------------------------------


def tiny_base() -> dict[str, Any]:
    base = json.loads((ROOT / "configs" / "tiny.json").read_text())
    base["train"].update(BENCH_TRAIN)
    return base


def run_cpu(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    base = tiny_base()
    ours_runs: dict[str, list[TrainRun]] = {"allllm train": [], "allllm train, fused AdamW": []}
    compiled_base = json.loads(json.dumps(base))
    compiled_base["train"]["compile"] = True
    if args.with_compile:
        ours_runs[COMPILED] = []
    plain_runs: list[PlainRun] = []
    plain_ours_runs: list[PlainRun] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        ws = Path(tmp)
        tok_s, shard_bin = prepare_workspace(ws, base, args.corpus)
        micro_rows: list[np.ndarray] = []
        lrs: list[float] = []
        cfg = workspace_config(ws, base, args.corpus)
        names = [*ours_runs, PLAIN_OURS, PLAIN]
        for rep in range(args.repeats):
            # interleaved, the order rotating each run (the first run of all is allllm's: the
            # plain loops replay the rows it fetched): load drifts hit every contender alike
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                if name in (PLAIN, PLAIN_OURS):
                    plain = run_plain_loop(
                        cfg, shard_bin, micro_rows, lrs, args.warmup, ours=name == PLAIN_OURS
                    )
                    (plain_runs if name == PLAIN else plain_ours_runs).append(plain)
                    progress(rep, name, plain.tokens_per_s, plain.cpu_share)
                    continue
                make = fused_adamw if "fused" in name else None
                run_base = compiled_base if name == COMPILED else base
                run_cfg = workspace_config(
                    ws, run_base, args.corpus, run=f"r{rep}-{make_tag(name)}"
                )
                run = run_ours(  # no forward/backward timers inside the compiled graph
                    run_cfg,
                    steps=args.steps,
                    warmup=args.warmup,
                    make_optimizer=make,
                    detailed=name != COMPILED,
                )
                if not micro_rows:
                    micro_rows = run.fetched
                    lrs = [r["lr"] for r in run.records]
                elif any(not np.array_equal(a, b) for a, b in zip(micro_rows, run.fetched)):
                    raise SystemExit("two allllm runs trained different rows")
                ours_runs[name].append(run)
                progress(rep, name, run.tokens_per_s, run.cpu_share)
    report_cpu(args, cfg, tok_s, ours_runs, plain_ours_runs, plain_runs)


def progress(rep: int, name: str, tokens_per_s: float, cpu_share: float) -> None:
    print(
        f"  run {rep + 1}: {name}: {tokens_per_s:,.0f} tokens/s, CPU share {cpu_share:.2f}",
        flush=True,
    )


def make_tag(name: str) -> str:
    return "compiled" if name == COMPILED else "fused" if "fused" in name else "ours"


def quiet_rate(runs: list[Any]) -> tuple[float, int]:
    """Tokens/s over the measured steps of all runs that had their cores (see QUIET)."""
    steps = [s for r in runs for s in r.quiet]
    if not steps:
        return float("nan"), 0
    return sum(s.tokens for s in steps) / sum(s.seconds for s in steps), len(steps)


def pooled_breakdown(runs: list[Any]) -> dict[str, float]:
    """Phase means over the quiet steps of all runs (all measured steps if none was quiet)."""
    steps = [s for r in runs for s in r.quiet]
    if steps:
        return phase_means(steps)
    return {k: statistics.median(r.breakdown[k] for r in runs) for k in runs[0].breakdown}


def report_cpu(
    args: argparse.Namespace,
    cfg: Config,
    tokenize_s: float,
    ours_runs: dict[str, list[TrainRun]],
    plain_ours_runs: list[PlainRun],
    plain_runs: list[PlainRun],
) -> None:
    import transformers

    base_tps = statistics.median(p.tokens_per_s for p in plain_runs)
    t = cfg.train
    print()
    print(
        f"machine: {machine_description()}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, threads {args.threads}"
    )
    print(
        f"config: configs/tiny.json (hidden {cfg.model.hidden_size}, {cfg.model.num_layers} "
        f"layers, seq {cfg.data.seq_len}, micro batch {t.micro_batch_size}, batch {t.batch_size}, "
        f"fp32); Shakespeare corpus tokenized in {tokenize_s:.1f} s; {args.steps} steps a run, "
        f"the first {args.warmup} excluded; {args.repeats} interleaved runs. The machine is "
        f"shared: a quiet step is one with a CPU share (process CPU time / wall time x "
        f"threads) >= {QUIET}"
    )
    print()
    base_quiet, base_n = quiet_rate(plain_runs)
    n_steps = args.repeats * (args.steps - args.warmup)
    print(
        "| contender | tokens/s (median of runs) | vs plain HF loop | CPU share (median) | "
        f"tokens/s over quiet steps | vs plain HF loop | quiet steps of {n_steps} |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, runs in [*ours_runs.items(), (PLAIN_OURS, plain_ours_runs)]:
        tps = statistics.median(r.tokens_per_s for r in runs)
        share = statistics.median(r.cpu_share for r in runs)
        quiet, n = quiet_rate(runs)
        print(
            f"| {name} | {tps:,.0f} | **{tps / base_tps:.2f}x** | {share:.2f} | {quiet:,.0f} | "
            f"**{quiet / base_quiet:.2f}x** | {n} |"
        )
    share = statistics.median(p.cpu_share for p in plain_runs)
    print(
        f"| plain HF loop (PhiForCausalLM sdpa, foreach AdamW) | {base_tps:,.0f} | 1.00x | "
        f"{share:.2f} | {base_quiet:,.0f} | 1.00x | {base_n} |"
    )
    print()
    rows = {name: pooled_breakdown(r) for name, r in ours_runs.items() if name != COMPILED}
    rows[PLAIN_OURS] = pooled_breakdown(plain_ours_runs)
    rows[PLAIN] = pooled_breakdown(plain_runs)
    cols = [*PHASES, "other", "step"]
    print("ms per optimizer step (mean over the quiet steps of all runs):")
    print()
    print("| contender | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, b in rows.items():
        print(f"| {name} | " + " | ".join(f"{1000 * b[c]:.1f}" for c in cols) + " |")
    print()
    ours = ours_runs["allllm train"]
    shares = [r.breakdown["fetch"] / r.breakdown["step"] for r in ours]
    per_fetch = (
        statistics.median(r.breakdown["fetch"] for r in ours) * t.micro_batch_size / t.batch_size
    )
    print(
        f"batch fetching inside `allllm train`: {statistics.median(shares):.3%} of step time "
        f"(max over runs {max(shares):.3%}; {1e6 * per_fetch:.0f} µs per micro-batch) — "
        f"budget 2%: {'OK' if max(shares) < 0.02 else 'OVER'}"
    )
    print(
        f"outside the measured steps (allllm train): set-up before the first step "
        f"{statistics.median(r.setup_s for r in ours):.2f} s, final checkpoint + close "
        f"{statistics.median(r.final_save_s for r in ours):.2f} s (median)"
    )
    first = ours[0].records
    print(
        f"same rows and weights: step-1 loss allllm {first[0]['loss']:.5f}, plain loop "
        f"{plain_runs[0].losses[0]:.5f}; step {len(first)}: {first[-1]['loss']:.4f} vs "
        f"{plain_runs[0].losses[-1]:.4f} (the plain loop decays every parameter)"
    )


# -- GPU (or any device): bigger configs through the real train() ---------------------------------


def size_base(size: str, args: argparse.Namespace) -> dict[str, Any]:
    from bench_model import gpu_config

    mcfg, micro = gpu_config(size)
    model = mcfg.model_dump(mode="json")
    model["max_position_embeddings"] = max(model["max_position_embeddings"], args.seq_len)
    micro = args.micro_batch or micro
    return {
        "name": f"bench-{size}",
        "model": model,
        "tokenizer": {"backend": "byte"},  # ids < 264 in a 51200-row embedding: fine for speed
        "data": {"seq_len": args.seq_len, "formats": ["bin"], "val_fraction": 0.01},
        "train": {
            "micro_batch_size": micro,
            "batch_size": micro * args.accum,
            "lr": 3e-4,
            "min_lr": 3e-5,
            "warmup_steps": 10,
            "precision": args.precision,
            "compile": not args.no_compile,
            **BENCH_TRAIN,
        },
    }


def run_sizes(args: argparse.Namespace) -> None:
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    else:
        torch.set_num_threads(args.threads)
        print(f"machine: {machine_description()}; torch {torch.__version__}")
    print(
        f"real train(), {args.precision}, compile {not args.no_compile}, seq {args.seq_len}, "
        f"{args.steps} steps a run (first {args.warmup} excluded), peak {args.peak_tflops} TFLOP/s"
    )
    print()
    print(
        "| model | params | micro x accum | tokens/s | MFU | fetch share | warm-up steps s "
        "(compile) | final save s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        base = size_base(size, args)
        with tempfile.TemporaryDirectory(prefix=f"bench-train-{size}-") as tmp:
            ws = Path(tmp)
            prepare_workspace(ws, base, args.corpus)
            cfg = workspace_config(ws, base, args.corpus)
            run = run_ours(
                cfg, steps=args.steps, warmup=args.warmup, device=args.device, detailed=False
            )
        fpt = flops_per_token(cfg.model, cfg.data.seq_len)
        mfu = run.tokens_per_s * fpt / (args.peak_tflops * 1e12)
        share = run.breakdown["fetch"] / run.breakdown["step"]
        warm_s = sum(run.step_seconds[: args.warmup])
        print(
            f"| {size} | {count_parameters(cfg.model) / 1e6:.0f}M | "
            f"{cfg.train.micro_batch_size} x {args.accum} | {run.tokens_per_s:,.0f} | {mfu:.1%} | "
            f"{share:.2%} | {warm_s:.1f} | {run.final_save_s:.1f} |",
            flush=True,
        )
        if args.device == "cuda":
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=None, help="steps per run (incl. warm-up)")
    parser.add_argument("--warmup", type=int, default=None, help="first steps not measured")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument(
        "--sizes", nargs="+", choices=["125m", "1b"], help="bigger configs (default on cuda)"
    )
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=None, help="override the size's")
    parser.add_argument("--accum", type=int, default=4, help="micro-batches per step")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--with-compile",
        action="store_true",
        help="CPU: also allllm train with train.compile (needs a C++ compiler)",
    )
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    if args.device == "cuda" or args.sizes:
        args.sizes = args.sizes or ["125m", "1b"]
        args.steps, args.warmup = args.steps or 30, args.warmup or 5
        run_sizes(args)
    else:
        args.steps, args.warmup = args.steps or 13, args.warmup or 3
        run_cpu(args)


if __name__ == "__main__":
    main()
