"""Checkpoint save and load: allllm's checkpoint against one plain ``torch.save`` file (issue 6).

For the `tiny` preset and a ~125M phi-style model (bench_model.py's: hidden 768,
12 layers, 12 heads, intermediate 3072, vocab 51200, tied embeddings, seq 2048),
the model gets one AdamW step (allllm's optimizer, random gradients) so its
moments exist. Then, interleaved, --repeats times:

- allllm save: ``state_io.model_state`` + ``state_io.optimizer_state`` (full,
  name-keyed state dicts), then ``checkpoint.save_checkpoint`` (model.safetensors,
  optimizer.pt, trainer_state.json with a config snapshot and RNG state; temporary
  dir, every file fsynced, rename, marker);
- baseline save: ``torch.save({"model": model.state_dict(), "optimizer":
  optimizer.state_dict()}, one_file)`` — reported without and with an ``os.fsync``
  of the file (allllm always fsyncs);
- allllm load, into a fresh model and optimizer, the path ``allllm train`` takes:
  ``latest_checkpoint`` (finds and verifies it), ``checkpoint.load_model_state``
  + ``state_io.load_model_state``, ``checkpoint.load_optimizer_state`` +
  ``state_io.load_optimizer_state``;
- baseline load: ``torch.load(weights_only=True)`` + ``load_state_dict`` of both.

Every load is checked to restore the weights and both AdamW moments exactly.
Files were just written, so loads read from the page cache (as a resume right
after a save does). The machine may be shared: runs are interleaved, their order
rotates (the first to touch fresh memory pays more), a warm-up round is not
counted, and figures are medians.

    python benchmarks/bench_checkpoint.py [--sizes tiny 125m] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch

from _machine import machine_description
from allllm.config import ModelConfig, TrainConfig, load_config_file
from allllm.hf import build_model
from allllm.model import empty_model
from allllm.train import checkpoint as ckpt_io
from allllm.train.optim import make_optimizer
from allllm.train.state_dicts import (
    load_model_state,
    load_optimizer_state,
    model_state,
    optimizer_state,
)

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
STEP = 1000


def size_config(size: str) -> ModelConfig:
    if size == "tiny":
        return load_config_file(ROOT / "configs" / "tiny.json").model
    from bench_model import gpu_config

    return gpu_config(size)[0]


def trained_model(cfg: ModelConfig) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A model after one AdamW step (random gradients), so the optimizer holds its moments."""
    torch.manual_seed(0)
    model = build_model(cfg, init_from=None)
    optimizer = make_optimizer(model, TrainConfig(), CPU)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def fresh(cfg: ModelConfig) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = empty_model(cfg)
    return model, make_optimizer(model, TrainConfig(), CPU)


def trainer_state(cfg: ModelConfig) -> dict[str, Any]:
    """What the trainer's state file holds besides the run plan: config and RNG, as plain JSON."""
    return {
        "run_complete": False,
        "rng": [{"torch": torch.get_rng_state().tolist()}],
        "config": {"model": cfg.model_dump(mode="json")},
        "seen": {},
    }


@contextmanager
def counting_fsync(total: list[float]) -> Iterator[None]:
    """Add the seconds spent in ``os.fsync`` to ``total[0]`` for the duration."""
    original = os.fsync

    def fsync(fd: int) -> None:
        start = time.perf_counter()
        original(fd)
        total[0] += time.perf_counter() - start

    os.fsync = fsync
    try:
        yield
    finally:
        os.fsync = original


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def ours_save(
    model: torch.nn.Module, opt: torch.optim.Optimizer, cfg: ModelConfig, where: Path
) -> dict[str, float]:
    fsync = [0.0]
    start = time.perf_counter()
    weights = model_state(model)
    osd = optimizer_state(model, opt)
    gathered = time.perf_counter()
    with counting_fsync(fsync):
        ckpt_io.save_checkpoint(
            where,
            STEP,
            model_state=weights,
            optimizer_state=osd,
            trainer_state=trainer_state(cfg),
        )
    end = time.perf_counter()
    return {"total": end - start, "state dicts": gathered - start, "fsync": fsync[0]}


def ours_load(
    cfg: ModelConfig, where: Path, set_optimizer: Callable[..., None] = load_optimizer_state
) -> tuple[dict[str, float], torch.nn.Module, Any]:
    model, opt = fresh(cfg)
    ref, t_find = timed(lambda: ckpt_io.latest_checkpoint(where))
    assert ref is not None and ref.step == STEP
    weights, t_read_w = timed(lambda: ckpt_io.load_model_state(ref))
    _, t_set_w = timed(lambda: load_model_state(model, weights, str(ref.path)))
    osd, t_read_o = timed(lambda: ckpt_io.load_optimizer_state(ref))
    _, t_set_o = timed(lambda: set_optimizer(model, opt, osd, str(ref.path)))
    times = {
        "find + verify": t_find,
        "read weights": t_read_w,
        "set weights": t_set_w,
        "read optimizer": t_read_o,
        "set optimizer": t_set_o,
    }
    times["total"] = sum(times.values())
    return times, model, opt


def baseline_save(
    model: torch.nn.Module, opt: torch.optim.Optimizer, path: Path
) -> dict[str, float]:
    _, t_save = timed(
        lambda: torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    )
    fd = os.open(path, os.O_RDONLY)
    try:
        _, t_fsync = timed(lambda: os.fsync(fd))
    finally:
        os.close(fd)
    return {"total": t_save, "with fsync": t_save + t_fsync}


def baseline_load(cfg: ModelConfig, path: Path) -> tuple[dict[str, float], torch.nn.Module, Any]:
    model, opt = fresh(cfg)
    start = time.perf_counter()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return {"total": time.perf_counter() - start}, model, opt


def same_state(
    ref_model: torch.nn.Module,
    ref_opt: torch.optim.Optimizer,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
) -> bool:
    """Weights and AdamW moments equal to the originals (a load that lost data would be fast)."""
    ok = all(torch.equal(a, b) for a, b in zip(ref_model.parameters(), model.parameters()))
    for a, b in zip(ref_model.parameters(), model.parameters()):
        sa, sb = ref_opt.state[a], opt.state[b]
        ok = ok and all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq"))
    return ok


SAVES = ("allllm", "torch.save")
LOADS = ("allllm", "torch.load")


def bench_size(size: str, repeats: int, warmup: int, tmp: Path) -> dict[str, Any]:
    cfg = size_config(size)
    model, opt = trained_model(cfg)
    saves: dict[str, list[dict[str, float]]] = {k: [] for k in SAVES}
    loads: dict[str, list[dict[str, float]]] = {k: [] for k in LOADS}
    for rep in range(warmup + repeats):
        ours_dir, base_file = tmp / f"{size}-{rep}", tmp / f"{size}-{rep}.pt"
        save_fns = {
            "allllm": partial(ours_save, model, opt, cfg, ours_dir),
            "torch.save": partial(baseline_save, model, opt, base_file),
        }
        load_fns = {
            "allllm": partial(ours_load, cfg, ours_dir),
            "torch.load": partial(baseline_load, cfg, base_file),
        }
        # interleaved, and the order rotates each run: the first to touch fresh memory pays more
        for name in SAVES[rep % 2 :] + SAVES[: rep % 2]:
            times = save_fns[name]()
            if rep >= warmup:
                saves[name].append(times)
        shift = rep % len(LOADS)
        for name in LOADS[shift:] + LOADS[:shift]:
            times, m2, o2 = load_fns[name]()
            if not same_state(model, opt, m2, o2):
                raise SystemExit(f"{size}: {name} did not restore the state")
            del m2, o2
            if rep >= warmup:
                loads[name].append(times)
        step_dir = ours_dir / ckpt_io.step_dir_name(STEP)
        files = {p.name: p.stat().st_size for p in step_dir.iterdir()}
        sizes = {"ours": sum(files.values()), "base": base_file.stat().st_size}
        shutil.rmtree(ours_dir)
        base_file.unlink()
        if rep >= warmup:
            runs = [f"save {n} {saves[n][-1]['total']:.2f} s" for n in SAVES]
            runs += [f"load {n} {loads[n][-1]['total']:.2f} s" for n in LOADS]
            print(f"  {size} run {rep - warmup + 1}: " + ", ".join(runs), flush=True)
    runs_by_name = {f"save {n}": saves[n] for n in SAVES} | {f"load {n}": loads[n] for n in LOADS}
    med = {
        k: {key: statistics.median(r[key] for r in v) for key in v[0]}
        for k, v in runs_by_name.items()
    }
    params = sum(p.numel() for p in model.parameters())
    return {"size": size, "params": params, "median": med, "bytes": sizes, "files": files}


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print()
    print(f"machine: {machine_description()}; torch {torch.__version__}")
    print(
        f"median of {args.repeats} interleaved runs (order rotating) after {args.warmup} "
        "warm-up run(s); loads read from the page cache"
    )
    print()
    print("| model | | allllm | torch.save / torch.load | allllm / baseline |")
    print("|---|---|---|---|---|")
    for r in results:
        m, b = r["median"], r["bytes"]
        name = f"{r['size']} ({r['params'] / 1e6:.1f}M)"
        ours_save, base_save = m["save allllm"], m["save torch.save"]
        rows = [
            ("on disk, MB", b["ours"] / 1e6, b["base"] / 1e6, "{:.1f}"),
            ("save, s (no fsync)", ours_save["total"] - ours_save["fsync"], base_save["total"]),
            ("save, s (durable: fsynced)", ours_save["total"], base_save["with fsync"]),
            ("load, s", m["load allllm"]["total"], m["load torch.load"]["total"]),
        ]
        for label, ours, base, *fmt in rows:
            f = fmt[0] if fmt else "{:.3f}"
            print(
                f"| {name} | {label} | {f.format(ours)} | {f.format(base)} | {ours / base:.2f}x |"
            )
            name = ""
    print()
    for r in results:
        m = r["median"]
        for key in ("save allllm", "load allllm"):
            parts = ", ".join(f"{k} {v:.3f}" for k, v in m[key].items() if k != "total")
            print(f"{r['size']}: {key}, of which s: {parts}")
        files = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(r["files"].items()))
        print(f"{r['size']}: files: {files}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["tiny", "125m"], choices=["tiny", "125m"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="uncounted first runs")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temp dir)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-", dir=args.dir) as tmp:
        results = [bench_size(s, args.repeats, args.warmup, Path(tmp)) for s in args.sizes]
    report(results, args)


if __name__ == "__main__":
    main()
