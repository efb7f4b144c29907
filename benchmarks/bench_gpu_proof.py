"""The GPU proof (issue 20): phi-2 and a ~1B phi model trained by ``allllm train`` itself.

Phases, each writing ``<phase>.json`` into ``--out`` (default ``$OUT``, else
``benchmarks/out/gpu-proof``) as soon as it finishes, so a run stopped at its time limit
still leaves the phases before it:

- ``env``: device name, torch / CUDA versions, memory, SMs, the dense bf16 peak of
  ``allllm.train.metrics.peak_flops_for_name``, free disk of the workspace.
- ``matmul``: the measured matmul ceiling (bf16 8192x8192x8192 on a GPU, median TFLOP/s
  of timed batches after warm-ups; a small fp32 one on CPU).
- ``phi2``: the phi-2 architecture (``configs/phi-2.json``'s model: 2.78B, hidden 2560, 32
  layers, partial rotary 0.4; random weights), seq 2048, micro batch 4, batch 32, bf16,
  ``train.compile`` on. ``phi1b``: phi-1.5's layout with 16 layers (~1.0B), micro batch 8.
  Each runs the real ``allllm.train.session.train()`` in a scratch workspace on generated
  text (byte tokenizer: 259 ids in the 51200-row embedding), until ``steady_s`` after
  the first (compiling) step, within ``--max-time`` (compile included) and
  ``--max-steps``; the bound's checkpoint is the one save
  (``keep_checkpoints: 1``), then ``train --dry-run`` in the same process loads it back
  (model and AdamW state: the load timed) and the checkpoints are deleted. Reported:
  tokens/s from metrics.jsonl, MFU (PaLM FLOPs against the device's dense bf16 peak and
  against the measured matmul ceiling), peak memory (``torch.cuda.max_memory_allocated``)
  next to the memory plan's total, a step-time breakdown (fetch / forward / backward /
  clip / optimizer / other, on a GPU from CUDA events, so nothing extra synchronises),
  first-step (compile) time, checkpoint save and load seconds.
- ``report``: a markdown table of the JSON files (printed, and ``report.md``).

Every phase runs in its own process (``env`` and ``matmul`` share one) with a hard time
cap (killed past it), under an overall ``--budget-s``: a later phase gets what is left,
keeping the minimum the phases after it need, and is skipped (with a JSON saying so)
when even its minimum is gone.

    python benchmarks/bench_gpu_proof.py [--smoke] [--phase env,matmul,phi2,phi1b,report]
        [--budget-s S] [--max-seconds PHASE=S] [--train-seconds PHASE=S]
        [--set PHASE.KEY=VALUE] [--compile | --no-compile] [--device auto|cuda|cpu]
        [--out DIR] [--workdir DIR] [--data-mb MB] [--keep-workdir]
    python benchmarks/bench_gpu_proof.py --phase report --out DIR   # the table again

``--smoke``: tiny shapes of the same architectures (CPU, or the GPU when present), every
phase end to end in well under a minute. ``--set`` keys: micro_batch, batch_size,
seq_len, compile, activation_checkpointing, precision, train_s, max_s, min_s, max_steps,
warmup. On the device machine: ``bash benchmarks/gpu_proof.sh`` (installs the carried
wheels, see ``benchmarks/fetch_gpu_wheels.sh``; docs/benchmarks.md has the command).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("env", "matmul", "phi2", "phi1b")
TRAIN_PHASES = ("phi2", "phi1b")
PROBE_PHASES = ("env", "matmul")
BREAKDOWN = ("fetch", "forward", "backward", "clip", "optimizer")
GIB = float(1 << 30)
#: time caps (kill) and minimums of the probe phases, seconds
PROBE_MAX_S = {"env": 40.0, "matmul": 50.0}
PROBE_MIN_S = {"env": 10.0, "matmul": 10.0}
#: bytes per second assumed for reading a checkpoint back when deciding there is time for it
ASSUMED_LOAD_BPS = 1.0e9
#: bytes a checkpoint takes per parameter: fp32 weights and AdamW's two fp32 moments
CHECKPOINT_BYTES_PER_PARAM = 12


# -- what each phase trains ------------------------------------------------------------------


@dataclass
class TrainSpec:
    """One training phase: the model, the setting and its time limits."""

    phase: str
    title: str
    model: dict[str, Any]
    seq_len: int
    micro_batch: int
    batch_size: int
    compile: bool
    precision: str = "auto"  # bf16-mixed on a bf16 GPU, fp32 on CPU
    activation_checkpointing: bool = False
    train_s: float = 120.0  # train()'s --max-time: compile and steps, not build/save/load
    steady_s: float | None = None  # stop this long after the first (compiling) step ends
    max_s: float = 240.0  # the whole phase's cap (process start ... checkpoints deleted)
    min_s: float = 60.0  # less time than this left: the phase is skipped
    max_steps: int | None = None
    warmup: int = 2  # first steps left out of tokens/s, MFU and the breakdown


def _preset_model(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "configs" / f"{name}.json").read_text())["model"]


def default_specs(smoke: bool) -> dict[str, TrainSpec]:
    phi2, phi15 = _preset_model("phi-2"), _preset_model("phi-1_5")
    phi1b = {**phi15, "num_layers": 16}  # phi-1.5's layout, 16 of its 24 layers: ~1.0B
    if not smoke:
        return {
            "phi2": TrainSpec(
                "phi2", "phi-2 (2.78B)", phi2, 2048, 4, 32, True,
                train_s=150.0, steady_s=75.0, max_s=280.0, min_s=150.0, max_steps=10_000,
            ),
            "phi1b": TrainSpec(
                "phi1b", "phi ~1B (phi-1.5 layout, 16 layers)", phi1b, 2048, 8, 32, True,
                train_s=100.0, steady_s=50.0, max_s=170.0, min_s=90.0, max_steps=10_000,
            ),
        }  # fmt: skip
    tiny = {"vocab_size": 512, "num_layers": 2, "max_position_embeddings": 128}
    return {  # the same architectures, tiny: head_dim 80 / rotary 0.4 and head_dim 64 / 0.5
        "phi2": TrainSpec(
            "phi2", "phi-2 shape, smoke", {**phi2, **tiny, "hidden_size": 160,
            "num_heads": 2, "num_kv_heads": 2, "intermediate_size": 640},
            128, 2, 4, False, train_s=20.0, max_s=45.0, min_s=8.0, max_steps=6,
        ),
        "phi1b": TrainSpec(
            "phi1b", "phi ~1B layout, smoke", {**phi1b, **tiny, "hidden_size": 128,
            "num_heads": 2, "num_kv_heads": 2, "intermediate_size": 512},
            128, 2, 4, False, train_s=20.0, steady_s=1.0, max_s=45.0, min_s=8.0, max_steps=40,
        ),  # stopped by steady_s (or max_steps): both bounds get exercised
    }  # fmt: skip


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(specs: dict[str, TrainSpec], args: argparse.Namespace) -> None:
    """``--compile/--no-compile``, ``--train-seconds``, ``--max-seconds`` and ``--set``."""
    names = {f.name for f in fields(TrainSpec)} - {"phase", "title", "model"}
    sets: list[tuple[str, str, Any]] = []
    for item in args.set or []:
        key, eq, value = item.partition("=")
        phase, dot, attr = key.partition(".")
        if not (eq and dot) or phase not in specs or attr not in names:
            sys.exit(f"--set {item!r}: expected PHASE.KEY=VALUE, PHASE in {sorted(specs)}, "
                     f"KEY in {sorted(names)}")  # fmt: skip
        sets.append((phase, attr, _parse_value(value)))
    for spec in specs.values():
        if args.compile is not None:
            spec.compile = args.compile
    for flag, attr in ((args.train_seconds, "train_s"), (args.max_seconds, "max_s")):
        for phase, value in (flag or {}).items():
            if phase in specs:
                setattr(specs[phase], attr, value)
    for phase, attr, value in sets:
        setattr(specs[phase], attr, value)


def phase_seconds(pairs: list[str] | None) -> dict[str, float]:
    out = {}
    for item in pairs or []:
        phase, _, value = item.partition("=")
        if phase not in PHASES or not _:
            sys.exit(f"{item!r}: expected PHASE=SECONDS with PHASE in {', '.join(PHASES)}")
        out[phase] = float(value)
    return out


# -- small helpers ---------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null, tuples lists, unknown objects strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically (temp file, rename): a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def log(text: str) -> None:
    print(f"[gpu-proof {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _disk_free(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _dir_bytes(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}


# -- the orchestrator ------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    if args.worker:
        sys.exit(worker_main(Path(args.worker)))
    if args.verdict:
        print(smoke_verdict(Path(args.verdict)))
        return
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    chosen = [p.strip() for p in args.phase.split(",") if p.strip()]
    bad = [p for p in chosen if p not in (*PHASES, "report")]
    if bad:
        sys.exit(f"--phase: unknown {', '.join(bad)} (choose from {', '.join(PHASES)}, report)")
    if chosen == ["report"]:
        print(report(out))
        return
    sys.exit(orchestrate(args, out, [p for p in PHASES if p in chosen]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, under a minute")
    parser.add_argument("--phase", default=",".join((*PHASES, "report")))
    parser.add_argument("--out", default=os.environ.get("OUT") or ROOT / "benchmarks/out/gpu-proof")
    parser.add_argument("--workdir", default=None, help="scratch workspace (default: a temp dir)")
    parser.add_argument("--keep-workdir", action="store_true")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="the whole run (470; smoke 60)"
    )
    parser.add_argument("--max-seconds", nargs="+", metavar="PHASE=S", help="a phase's cap")
    parser.add_argument(
        "--train-seconds", nargs="+", metavar="PHASE=S", help="train()'s --max-time"
    )
    parser.add_argument("--set", nargs="+", metavar="PHASE.KEY=VALUE", help="override a setting")
    parser.add_argument("--compile", dest="compile", action="store_true", default=None)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument(
        "--data-mb", type=float, default=None, help="generated text (24; smoke 0.25)"
    )
    parser.add_argument(
        "--verdict", metavar="DIR", help="print ok | eager | fail for a smoke run's out dir"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.max_seconds = phase_seconds(args.max_seconds)
    args.train_seconds = phase_seconds(args.train_seconds)
    return args


def orchestrate(args: argparse.Namespace, out: Path, phases: list[str]) -> int:
    started = time.monotonic()
    budget = args.budget_s or (60.0 if args.smoke else 470.0)
    deadline = started + budget
    specs = default_specs(args.smoke)
    apply_overrides(specs, args)
    probe_max = {**PROBE_MAX_S, **{k: v for k, v in args.max_seconds.items() if k in PROBE_MAX_S}}
    if args.smoke:
        probe_max = {k: min(v, 30.0) for k, v in probe_max.items()}
    own_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="allllm-gpu-proof-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    common = {
        "smoke": args.smoke,
        "device": args.device,
        "out": str(out),
        "workdir": str(workdir),
        "data_mb": args.data_mb or (0.25 if args.smoke else 24.0),
    }
    log(f"phases {', '.join(phases)}; budget {budget:.0f} s; out {out}; workdir {workdir}")

    def minimum(phase: str) -> float:
        return PROBE_MIN_S[phase] if phase in PROBE_MIN_S else specs[phase].min_s

    ok = True
    groups: list[list[str]] = []
    probes = [p for p in phases if p in PROBE_PHASES]
    if probes:
        groups.append(probes)
    groups += [[p] for p in phases if p in TRAIN_PHASES]
    try:
        for i, group in enumerate(groups):
            later = sum(minimum(p) for g in groups[i + 1 :] for p in g)
            available = deadline - time.monotonic() - later
            want = sum(probe_max[p] for p in group) if group == probes else specs[group[0]].max_s
            need = sum(minimum(p) for p in group)
            cap = min(want, available)
            if cap < need:
                for phase in group:
                    write_json(out / f"{phase}.json", {
                        "phase": phase, "status": "skipped", "smoke": args.smoke,
                        "reason": f"budget: {max(available, 0):.0f} s left for it, needs "
                                  f"{need:.0f} s (--budget-s {budget:.0f})",
                    })  # fmt: skip
                log(f"{'+'.join(group)}: skipped (budget)")
                ok = False
                continue
            job: dict[str, Any] = {**common, "phases": group, "cap_s": cap}
            if group != probes:
                spec = specs[group[0]]
                # train()'s bound shrinks with the cap; the rest (start, build, save, load) stays
                allowance = max(spec.max_s - spec.train_s, 0.0)
                train_s = min(spec.train_s, max(cap - allowance, 0.25 * spec.train_s))
                job["spec"] = {**asdict(spec), "train_s": train_s, "max_s": cap}
            ok = run_worker(job, workdir, out, cap) and ok
    finally:
        if own_workdir and not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    text = report(out)
    print(text, flush=True)
    log(f"done in {time.monotonic() - started:.1f} s ({'ok' if ok else 'with failures'})")
    return 0 if ok else 1


def run_worker(job: dict[str, Any], workdir: Path, out: Path, cap: float) -> bool:
    """One worker process for ``job['phases']``, killed (its process group) past ``cap``."""
    name = "+".join(job["phases"])
    job_file = workdir / f"job-{name}.json"
    job["deadline_unix"] = time.time() + cap
    write_json(job_file, job)
    log(f"{name}: starting (cap {cap:.0f} s)")
    started = time.monotonic()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(job_file)]
    proc = subprocess.Popen(cmd, start_new_session=True)
    killed = False
    try:
        rc = proc.wait(timeout=cap)
    except BaseException as exc:  # past its cap, or this process interrupted
        killed = isinstance(exc, subprocess.TimeoutExpired)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the worker's group only: it and its children
        rc = proc.wait()
        if not killed:
            raise
    seconds = time.monotonic() - started
    ok = True
    for phase in job["phases"]:
        path = out / f"{phase}.json"
        data = read_json(path) or {"phase": phase, "smoke": job["smoke"]}
        if killed or data.get("status") not in ("ok", "error"):
            data["status"] = "killed" if killed else "error"
            data["reason"] = (
                f"killed at its cap of {cap:.0f} s" if killed else f"worker exited {rc}"
            ) + (f" during {data['stage']}" if data.get("stage") else "")
        ok = ok and data["status"] == "ok"
        data.setdefault("phase_s", seconds)
        write_json(path, data)
    if "spec" in job:  # the disk holds one phi-2 checkpoint: never leave one behind
        shutil.rmtree(workdir / f"seq{job['spec']['seq_len']}" / "checkpoints", ignore_errors=True)
    log(f"{name}: {'ok' if ok else 'FAILED'} in {seconds:.1f} s (rc {rc})")
    return ok


# -- the workers -----------------------------------------------------------------------------


class PhaseFile:
    """A phase's JSON, rewritten whenever it has something new (``stage`` says where it is)."""

    def __init__(self, out: Path, phase: str, smoke: bool) -> None:
        self.path = out / f"{phase}.json"
        self.data: dict[str, Any] = {"phase": phase, "status": "running", "smoke": smoke}
        self.started = time.monotonic()

    def update(self, **values: Any) -> None:
        self.data.update(values)
        self.data["seconds"] = time.monotonic() - self.started
        write_json(self.path, self.data)


def worker_main(job_file: Path) -> int:
    job = json.loads(job_file.read_text())
    out = Path(job["out"])
    import torch

    device = job["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        for phase in job["phases"]:
            reason = "--device cuda: no CUDA device"
            write_json(out / f"{phase}.json", {"phase": phase, "status": "error", "reason": reason})
        return 1
    rc = 0
    for phase in job["phases"]:
        pf = PhaseFile(out, phase, job["smoke"])
        pf.update(device=device, stage="start")
        try:
            if phase == "env":
                pf.update(**env_phase(device, Path(job["workdir"])))
            elif phase == "matmul":
                pf.update(**matmul_phase(device, job["smoke"]))
            else:
                train_phase(TrainSpec(**job["spec"]), job, device, pf)
            pf.update(status="ok", stage="done")
        except BaseException as exc:  # the JSON says what broke; the next phase still runs
            pf.update(
                status="error",
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc()[-4000:],
            )
            log(f"{phase}: {type(exc).__name__}: {exc}")
            rc = 1
            if isinstance(exc, KeyboardInterrupt):
                raise
    return rc


def env_phase(device: str, workdir: Path) -> dict[str, Any]:
    import torch

    import allllm
    from allllm.train.metrics import peak_flops_for_name

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "allllm": allllm.__version__,
        "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "workdir": str(workdir),
        "workdir_free_bytes": _disk_free(workdir),
        "cwd_free_bytes": _disk_free(Path.cwd()),
    }
    with contextlib.suppress(Exception):
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=10
        ).stdout.strip()
    if device != "cuda":
        from _machine import machine_description

        info.update(
            device_name=machine_description(),
            peak_flops=None,
            peak_note="CPU: no dense bf16 peak (metrics.jsonl leaves mfu out on CPUs)",
        )
        return info
    props = torch.cuda.get_device_properties(0)
    name = torch.cuda.get_device_name(0)
    peak = peak_flops_for_name(name)
    info.update(
        device_name=name,
        capability=list(torch.cuda.get_device_capability(0)),
        total_memory_bytes=props.total_memory,
        multiprocessors=props.multi_processor_count,
        l2_cache_bytes=getattr(props, "L2_cache_size", None),
        cudnn=torch.backends.cudnn.version(),
        bf16_supported=torch.cuda.is_bf16_supported(),
        peak_flops=peak,
        peak_note=None if peak else f"{name!r} is not in allllm's peak table: no MFU vs peak",
    )
    with contextlib.suppress(Exception):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
             "power.limit", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    return info


def matmul_phase(device: str, smoke: bool) -> dict[str, Any]:
    """The matmul ceiling: median TFLOP/s over timed batches of square products."""
    import torch

    cuda = device == "cuda"
    n = 8192 if cuda and not smoke else (2048 if cuda else 512)
    dtype = torch.bfloat16 if cuda else torch.float32
    per_batch, batches, warm = (10, 10, 3) if cuda else (4, 5, 1)
    torch.manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    times = []
    for i in range(warm + batches):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(per_batch):
                torch.mm(a, b, out=c)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            t0 = time.perf_counter()
            for _ in range(per_batch):
                torch.mm(a, b, out=c)
            seconds = time.perf_counter() - t0
        if i >= warm:
            times.append(seconds / per_batch)
    flops = 2.0 * n**3
    tflops = sorted(flops / t / 1e12 for t in times)
    del a, b, c
    if cuda:
        torch.cuda.empty_cache()
    return {
        "n": n,
        "dtype": str(dtype).replace("torch.", ""),
        "data": "randn",
        "products_per_batch": per_batch,
        "timed_batches": batches,
        "warmup_batches": warm,
        "ceiling_tflops": statistics.median(tflops),
        "tflops_min": tflops[0],
        "tflops_max": tflops[-1],
        "timer": "CUDA events" if cuda else "perf_counter",
    }


# ---- training ------------------------------------------------------------------------------


def generate_text(path: Path, n_bytes: int, seed: int = 20) -> None:
    """Deterministic English-looking text: paragraphs of pseudo-words, blank lines between."""
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    weights = [12, 9, 8, 7.5, 7, 6.7, 6.3, 6, 5.9, 4.3, 4, 2.8, 2.8, 2.4, 2.2, 2, 2, 1.9, 1.5,
               1.3, 1, 0.8, 0.15, 0.1, 0.15, 0.07]  # fmt: skip
    words = ["".join(rng.choices(letters, weights, k=rng.randint(1, 9))) for _ in range(4000)]
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with path.open("w", encoding="utf-8") as fh:
        while written < n_bytes:
            para = " ".join(rng.choices(words, k=rng.randint(60, 400))).capitalize() + ".\n\n"
            fh.write(para)
            written += len(para)


def phase_base(spec: TrainSpec, *, compile: bool) -> dict[str, Any]:
    """The phase's config as JSON data (paths are filled in by ``phase_config``)."""
    return {
        "name": f"proof-{spec.phase}",
        "model": {**spec.model, "max_position_embeddings": max(
            spec.model.get("max_position_embeddings", 2048), spec.seq_len)},
        "tokenizer": {"backend": "byte", "add_eos": True},
        "data": {"seq_len": spec.seq_len, "formats": ["bin"],
                 "document_boundary": "blank_line", "val_fraction": 0.0},
        "train": {
            "micro_batch_size": spec.micro_batch, "batch_size": spec.batch_size,
            "lr": 3e-4, "min_lr": 3e-5, "warmup_steps": 10, "precision": spec.precision,
            "compile": compile, "activation_checkpointing": spec.activation_checkpointing,
            "checkpoint_every": 10**9, "keep_checkpoints": 1, "eval_every": 0,
            "forgetting_eval_tokens": 0,
        },
    }  # fmt: skip


def phase_config(spec: TrainSpec, workspace: Path, raw: Path, *, compile: bool) -> Any:
    """The phase's allllm Config: data under ``workspace``, checkpoints per phase."""
    from _train_harness import workspace_config

    return workspace_config(workspace, phase_base(spec, compile=compile), raw, run=spec.phase)


def ensure_data(spec: TrainSpec, workspace: Path, data_mb: float) -> dict[str, Any]:
    """Generated text tokenized into ``workspace/data`` once per seq_len (phases share it)."""
    raw = workspace.parent / "raw" / "text.txt"
    if not raw.exists():
        t0 = time.perf_counter()
        generate_text(raw, int(data_mb * 1e6))
        generated = time.perf_counter() - t0
    else:
        generated = 0.0
    if list((workspace / "data").glob("*.meta.json")):
        return {"raw": str(raw), "generate_s": generated, "tokenize_s": 0.0}
    from _train_harness import prepare_workspace

    seconds, shard = prepare_workspace(workspace, phase_base(spec, compile=False), raw)
    return {
        "raw": str(raw),
        "raw_bytes": raw.stat().st_size,
        "generate_s": generated,
        "tokenize_s": seconds,
        "shard_bytes": shard.stat().st_size,
    }


class Marks:
    """Phase intervals inside ``train()``'s steps: CUDA events on a GPU, perf_counter on CPU.

    Events are read one step late (the step after has synchronised on its loss, so they are
    complete): timing adds no synchronisation to the loop.
    """

    def __init__(self, cuda: bool) -> None:
        import torch

        self.torch, self.cuda = torch, cuda
        self.open: dict[str, Any] = {}
        self.current: list[tuple[str, Any, Any]] = []
        self.unresolved: list[tuple[int, list[tuple[str, Any, Any]]]] = []
        self.cpu: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []  # per step: wall "step" and each phase's s
        self.first: float | None = None  # the first step began
        self.first_done: float | None = None  # the first step ended
        self.last: float | None = None
        self.peak_train: int | None = None

    def mark(self) -> Any:
        if self.cuda:
            event = self.torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self, phase: str) -> None:
        self.open[phase] = self.mark()

    def stop(self, phase: str) -> None:
        began = self.open.pop(phase, None)
        if began is not None:
            self.current.append((phase, began, self.mark()))

    def add_cpu(self, phase: str, seconds: float) -> None:
        self.cpu[phase] = self.cpu.get(phase, 0.0) + seconds

    def begin(self) -> None:
        if self.first is None:
            self.first = self.last = time.perf_counter()

    def _elapsed(self, a: Any, b: Any) -> float:
        return a.elapsed_time(b) / 1000 if self.cuda else b - a

    def _resolve(self, final: bool = False) -> None:
        keep = []
        for index, intervals in self.unresolved:
            if final or index < len(self.steps) - 1:
                for phase, a, b in intervals:
                    row = self.steps[index]
                    row[phase] = row.get(phase, 0.0) + self._elapsed(a, b)
            else:
                keep.append((index, intervals))
        self.unresolved = keep

    def step_done(self) -> None:
        now = time.perf_counter()
        row = {"step": now - (self.last or now), **self.cpu}
        self.steps.append(row)
        self.unresolved.append((len(self.steps) - 1, self.current))
        self.current, self.cpu, self.last = [], {}, now
        if self.first_done is None:
            self.first_done = now
        self._resolve()
        if self.cuda:
            self.peak_train = int(self.torch.cuda.max_memory_allocated())

    def finish(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
        self._resolve(final=True)


@contextlib.contextmanager
def instrumented(
    marks: Marks,
    saves: dict[str, float],
    *,
    steady_s: float | None,
    min_steps: int = 1,
    allow_save: bool,
    on_save: Callable[[], None] | None = None,
) -> Iterator[Any]:
    """Timers patched into the trainer for one ``train()`` call (restored on exit): the
    dataset fetch (CPU), the model's forward and the optimizer's step (hooks), backward and
    the gradient clip (wrapped), the checkpoint save; the reporter marks step boundaries.

    ``steady_s``: one more bound, that long after the first step ended and not before
    ``min_steps`` steps (compile takes what it takes; the steady steps get their seconds).
    ``allow_save`` False: the bound's checkpoint is not written (the disk could not hold
    it). ``on_save`` runs before it (the step figures are written before a long save can
    meet the phase's cap)."""
    import torch

    from allllm.data.dataset import ShardDataset
    from allllm.train import checkpoint as ckpt_io
    from allllm.train import loop as loop_mod
    from allllm.train import session as session_mod

    originals = {
        "fetch": ShardDataset.fetch,
        "make": session_mod.make_optimizer,
        "backward": torch.Tensor.backward,
        "clip": loop_mod.clip_gradients,
        "save": session_mod.Session._save,
        "write": getattr(ckpt_io, "save_checkpoint", None),
        "reached": loop_mod.Bounds.reached,
    }

    def reached(self: Any) -> str | None:
        hit = originals["reached"](self)
        done = marks.first_done
        late = steady_s is not None and done is not None and time.perf_counter() - done >= steady_s
        if hit is None and late and len(marks.steps) >= min_steps:
            return f"--steady-s {steady_s:g} (bench_gpu_proof)"
        return hit

    def save(*args: Any, **kwargs: Any) -> Any:
        if on_save is not None:
            on_save()
        if not allow_save:
            saves["save_skipped"] = 1.0
            return None
        return timed("save_s", originals["save"])(*args, **kwargs)

    def fetch(self: Any, rows: Any) -> Any:
        marks.begin()  # the first fetch opens the first step
        t0 = time.perf_counter()
        result = originals["fetch"](self, rows)
        marks.add_cpu("fetch", time.perf_counter() - t0)
        return result

    def make(model: Any, train: Any, device: Any) -> Any:
        optimizer = originals["make"](model, train, device)
        model.register_forward_pre_hook(lambda *_a: marks.start("forward"))
        model.register_forward_hook(lambda *_a: marks.stop("forward"))
        optimizer.register_step_pre_hook(lambda *_a: marks.start("optimizer"))
        optimizer.register_step_post_hook(lambda *_a: marks.stop("optimizer"))
        return optimizer

    def backward(self: Any, *args: Any, **kwargs: Any) -> Any:
        marks.start("backward")
        try:
            return originals["backward"](self, *args, **kwargs)
        finally:
            marks.stop("backward")

    def clip(*args: Any, **kwargs: Any) -> Any:
        marks.start("clip")
        try:
            return originals["clip"](*args, **kwargs)
        finally:
            marks.stop("clip")

    def timed(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                saves[key] = saves.get(key, 0.0) + time.perf_counter() - t0

        return wrapper

    ShardDataset.fetch = fetch  # type: ignore[method-assign]
    session_mod.make_optimizer = make  # type: ignore[assignment]
    torch.Tensor.backward = backward  # type: ignore[method-assign]
    loop_mod.clip_gradients = clip  # type: ignore[assignment]
    session_mod.Session._save = save  # type: ignore[method-assign]
    loop_mod.Bounds.reached = reached  # type: ignore[method-assign]
    if originals["write"] is not None:
        ckpt_io.save_checkpoint = timed("save_write_s", originals["write"])
    try:
        yield
    finally:
        ShardDataset.fetch = originals["fetch"]  # type: ignore[method-assign]
        session_mod.make_optimizer = originals["make"]
        torch.Tensor.backward = originals["backward"]  # type: ignore[method-assign]
        loop_mod.clip_gradients = originals["clip"]
        session_mod.Session._save = originals["save"]  # type: ignore[method-assign]
        loop_mod.Bounds.reached = originals["reached"]  # type: ignore[method-assign]
        if originals["write"] is not None:
            ckpt_io.save_checkpoint = originals["write"]


def memory_plan(cfg: Any, device: str, device_memory: int | None = None) -> dict[str, Any]:
    """The plan's estimate for this setting (allllm.train.memory_plan), or why there is none;
    with ``device_memory`` it also says whether the setting fits."""
    try:
        from allllm.train.memory_plan import plan_memory
    except ImportError as exc:
        return {"plan_total_bytes": None, "plan_note": f"plan: unavailable ({exc})"}
    try:
        plan = plan_memory(
            cfg.model,
            cfg.train,
            seq_len=cfg.data.seq_len,
            world_size=1,
            device_type=device,
            device_memory=device_memory,
        )
        return {"plan_total_bytes": int(plan.total), "plan": plan.to_dict(), "plan_note": None}
    except Exception as exc:  # a broken plan must not cost the measurement
        return {"plan_total_bytes": None, "plan_note": f"plan failed: {type(exc).__name__}: {exc}"}


def _reporter(marks: Marks) -> Any:
    from allllm.train.options import QuietReporter

    class StepMarks(QuietReporter):
        def step(self, record: dict[str, Any]) -> None:
            marks.step_done()
            super().step(record)

    return StepMarks()


def compile_counters() -> dict[str, Any]:
    """Dynamo's counters: how many graphs, graph breaks and recompiles compile made (one
    block graph reused by every block is the good case; the recompile limit falls back to
    eager for the rest)."""
    try:
        from torch._dynamo.utils import counters

        return {
            "stats": dict(counters.get("stats", {})),
            "graph_breaks": sum(counters.get("graph_break", {}).values()),
            "recompiles": dict(counters.get("recompiles", {})),
        }
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _free_cuda(torch: Any, compiled: bool) -> None:
    import gc

    gc.collect()
    if compiled:
        with contextlib.suppress(Exception):
            torch._dynamo.reset()  # compiled code may hold the last model's modules
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def train_once(
    cfg: Any,
    spec: TrainSpec,
    device: str,
    train_s: float,
    marks: Marks,
    *,
    allow_save: bool,
    on_save: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """One bounded ``train()`` with the timers in; its figures (not yet summarised)."""
    import torch

    from allllm.train.options import TrainOptions
    from allllm.train.session import train

    cuda = device == "cuda"
    saves: dict[str, float] = {}
    reporter = _reporter(marks)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with instrumented(
        marks,
        saves,
        steady_s=spec.steady_s,
        min_steps=spec.warmup + 2,
        allow_save=allow_save,
        on_save=on_save,
    ):
        result = train(
            cfg, TrainOptions(max_time=train_s, max_steps=spec.max_steps, device=device), reporter
        )
    ended = time.perf_counter()
    marks.finish()
    return {
        "result": result,
        "saves": saves,
        "setup_s": (marks.first or ended) - t0,
        "after_last_step_s": ended - (marks.last or ended),
        "peak_after_save": int(torch.cuda.max_memory_allocated()) if cuda else None,
        "peak_reserved": int(torch.cuda.max_memory_reserved()) if cuda else None,
        "warnings": list(reporter.warnings)[:20],
    }


def summarise_steps(marks: Marks, records: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    from _train_harness import window_tokens_per_s

    steps = marks.steps
    skip = min(warmup, max(len(steps) - 2, 0))
    kept = steps[skip:] or steps
    out: dict[str, Any] = {"steps": len(steps), "warmup_steps_excluded": skip}
    if skip < warmup:
        out["steps_note"] = (
            f"only {len(steps)} steps: {skip} (not {warmup}) left out as warm-up, so the "
            "figures include warm-up time (and compile's, when on)"
        )
    if not kept:
        return out
    mean = {p: sum(s.get(p, 0.0) for s in kept) / len(kept) for p in BREAKDOWN}
    mean["step"] = sum(s["step"] for s in kept) / len(kept)
    mean["other"] = mean["step"] - sum(mean[p] for p in BREAKDOWN)
    out["breakdown_ms"] = {k: 1000 * v for k, v in mean.items()}
    out["breakdown_share"] = {k: v / mean["step"] for k, v in mean.items() if mean["step"]}
    steady = statistics.median(s["step"] for s in kept)
    out["step_s"] = [s["step"] for s in steps]
    out["first_step_s"] = steps[0]["step"]
    out["steady_step_s"] = steady
    # compile (if on) and first-step work; unknown when no later step was left to compare
    out["warmup_extra_s"] = steps[0]["step"] - steady if skip >= 1 else None
    if skip >= 1 and len(records) > skip + 1:
        out["tokens_per_s"] = window_tokens_per_s(records, skip)
    elif len(records) >= 2:  # too few steps: from the step times themselves
        out["tokens_per_s"] = sum(r["tokens_per_s"] for r in records[1:]) / (len(records) - 1)
    elif records:
        out["tokens_per_s"] = records[0]["tokens_per_s"]
    measured = records[skip:] or records
    out["tokens_per_s_median_step"] = statistics.median(r["tokens_per_s"] for r in measured)
    mfus = [r["mfu"] for r in measured if r.get("mfu") is not None]
    out["mfu_metrics_median_step"] = statistics.median(mfus) if mfus else None
    out["losses"] = [r.get("loss") for r in records]
    return out


def train_phase(spec: TrainSpec, job: dict[str, Any], device: str, pf: PhaseFile) -> None:
    import torch

    from allllm.model.sizes import count_parameters, flops_per_token
    from allllm.train.metrics import METRICS_FILE, peak_flops_for_name
    from allllm.train.precision import resolve_precision
    from allllm.util.jsonl import read_jsonl

    deadline = job["deadline_unix"]
    cuda = device == "cuda"
    workdir = Path(job["workdir"])
    workspace = workdir / f"seq{spec.seq_len}"
    pf.update(stage="data", spec=asdict(spec))
    data = ensure_data(spec, workspace, job["data_mb"])
    raw = Path(data["raw"])
    cfg = phase_config(spec, workspace, raw, compile=spec.compile)
    precision = resolve_precision(spec.precision, torch.device(device))
    fpt = flops_per_token(cfg.model, spec.seq_len)
    params = count_parameters(cfg.model)
    name = torch.cuda.get_device_name(0) if cuda else None
    peak = peak_flops_for_name(name) if cuda and precision.autocast_dtype is not None else None
    matmul = read_json(Path(job["out"]) / "matmul.json") or {}
    ceiling = matmul.get("ceiling_tflops") if matmul.get("status") == "ok" else None
    device_memory = torch.cuda.get_device_properties(0).total_memory if cuda else None
    pf.update(
        stage="train",
        data=data,
        model={k: cfg.model.model_dump()[k] for k in (
            "arch", "vocab_size", "hidden_size", "intermediate_size", "num_layers",
            "num_heads", "num_kv_heads", "partial_rotary_factor", "tie_word_embeddings")},
        parameters=params,
        flops_per_token=fpt,
        seq_len=spec.seq_len,
        micro_batch=spec.micro_batch,
        batch_size=spec.batch_size,
        accum=-(-spec.batch_size // spec.micro_batch),
        precision=precision.name,
        compile=spec.compile,
        activation_checkpointing=spec.activation_checkpointing,
        train_s_bound=spec.train_s,
        **memory_plan(cfg, device, device_memory),
    )  # fmt: skip
    log(f"{spec.phase}: {_count(params)} parameters, train() for at most "
        f"{spec.train_s:.0f} s{' (compile on)' if spec.compile else ''}")  # fmt: skip
    need = CHECKPOINT_BYTES_PER_PARAM * params * 1.005 + 0.5e9  # written once: temp dir, rename
    free = _disk_free(workspace)
    allow_save = free is None or free >= need
    if not allow_save:
        pf.update(save_note=f"save skipped: {free / 1e9:.1f} GB free on the workspace's disk, "
                            f"the checkpoint needs ~{need / 1e9:.1f} GB")  # fmt: skip
    compiled = spec.compile
    marks = Marks(cuda)
    mfu_note = None
    if peak is None:
        mfu_note = ("CPU: no dense bf16 peak" if not cuda else
                    f"no peak for {name!r} / {precision.name}")  # fmt: skip
    ceiling_flops = ceiling * 1e12 if ceiling else None

    def step_figures() -> dict[str, Any]:
        """What the steps showed: from metrics.jsonl and the timers (also before the save)."""
        marks.finish()  # training is over: reading every event may synchronise now
        records = read_jsonl(cfg.checkpoint_path / METRICS_FILE)
        summary = summarise_steps(marks, records, spec.warmup)
        tps, plan_total, peak_mem = (
            summary.get("tokens_per_s"), pf.data.get("plan_total_bytes"), marks.peak_train
        )  # fmt: skip
        return {
            **summary,
            "compile": compiled,
            "mfu_vs_peak": tps * fpt / peak if tps and peak else None,
            "mfu_vs_ceiling": tps * fpt / ceiling_flops if tps and ceiling_flops else None,
            "peak_flops": peak,
            "ceiling_flops": ceiling_flops,
            "ceiling_dtype": matmul.get("dtype"),
            "mfu_note": mfu_note,
            "ceiling_note": None if ceiling_flops else "no matmul.json from this run's out dir",
            "compile_s": summary.get("warmup_extra_s") if compiled else None,
            "peak_memory_bytes": peak_mem,
            "peak_memory_note": None if cuda else "CPU: no allocator peak (see rss_peak_bytes)",
            "plan_vs_peak": plan_total / peak_mem if plan_total and peak_mem else None,
            "compile_counters": compile_counters() if compiled else None,
        }

    def before_save() -> None:
        pf.update(stage="save", **step_figures())

    failed = None
    try:
        run = train_once(
            cfg, spec, device, spec.train_s, marks, allow_save=allow_save, on_save=before_save
        )
    except Exception as exc:
        oom = "OutOfMemoryError" in type(exc).__name__
        if not spec.compile or marks.steps or oom or time.time() > deadline - spec.train_s:
            raise
        failed = f"{type(exc).__name__}: {exc}"[:2000]
    if failed is not None:  # outside the except: its traceback no longer holds the model
        # failed before its first step, compiling: the same run eager, in a fresh checkpoint dir
        pf.update(compile_error=failed, compile=False)
        log(f"{spec.phase}: with compile: {failed}; again without compile")
        shutil.rmtree(cfg.checkpoint_path, ignore_errors=True)
        _free_cuda(torch, True)
        compiled = False
        cfg = phase_config(spec, workspace, raw, compile=False)
        left = deadline - time.time() - (spec.max_s - spec.train_s)
        marks = Marks(cuda)
        run = train_once(
            cfg, spec, device, max(min(spec.train_s, left), 0.25 * spec.train_s), marks,
            allow_save=allow_save, on_save=before_save,
        )  # fmt: skip
    result = run["result"]
    figures = step_figures()
    ckpt = Path(result.checkpoint) if result.checkpoint else None
    files = _dir_bytes(ckpt) if ckpt and ckpt.is_dir() else {}
    rss = None
    with contextlib.suppress(Exception):
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    pf.update(
        stage="trained",
        train_status=result.status,
        stopped_by=result.stopped_by,
        step=result.step,
        tokens=result.tokens_seen,
        **figures,
        setup_s=run["setup_s"],
        peak_after_save_bytes=run["peak_after_save"],
        peak_reserved_bytes=run["peak_reserved"],
        rss_peak_bytes=rss,
        save_s=run["saves"].get("save_s"),
        save_write_s=run["saves"].get("save_write_s"),
        after_last_step_s=run["after_last_step_s"],
        checkpoint=str(ckpt) if ckpt else None,
        checkpoint_bytes=sum(files.values()) if files else None,
        checkpoint_files=files,
        warnings=run["warnings"],
    )
    del run, result
    _free_cuda(torch, compiled)
    if ckpt is None:
        pf.update(load_note="no checkpoint was written: nothing to load")
        return
    tps = figures.get("tokens_per_s") or 0
    log(f"{spec.phase}: {figures.get('steps')} steps, {tps:,.0f} tokens/s; loading back")
    load_phase(cfg, spec, workspace, raw, device, pf, deadline)
    shutil.rmtree(cfg.checkpoint_path, ignore_errors=True)
    pf.update(checkpoints_deleted=True)


def load_phase(
    cfg: Any, spec: TrainSpec, workspace: Path, raw: Path, device: str, pf: PhaseFile,
    deadline: float,
) -> None:  # fmt: skip
    """``train --dry-run`` on the saved checkpoint (eager: no compile): the real resume path
    builds the model from the file and restores AdamW; both are timed."""
    import torch

    from allllm.train import session as session_mod
    from allllm.train.options import TrainOptions

    size = pf.data.get("checkpoint_bytes") or 0
    if time.time() + size / ASSUMED_LOAD_BPS > deadline:
        pf.update(load_note="skipped: too little time left before the phase's cap")
        return
    cuda = device == "cuda"
    pf.update(
        stage="load", memory_before_load_bytes=torch.cuda.memory_allocated() if cuda else None
    )
    timings: dict[str, float] = {}

    def timed(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if cuda:
                torch.cuda.synchronize()
            timings[key] = time.perf_counter() - t0
            return out

        return wrapper

    load_cfg = phase_config(spec, workspace, raw, compile=False)
    prepare, restore = session_mod.prepare_model, session_mod.restore_optimizer
    session_mod.prepare_model = timed("load_model_s", prepare)
    session_mod.restore_optimizer = timed("load_optimizer_s", restore)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        result = session_mod.train(load_cfg, TrainOptions(dry_run=True, device=device))
    finally:
        session_mod.prepare_model, session_mod.restore_optimizer = prepare, restore
    total = time.perf_counter() - t0
    load_s = None
    if "load_model_s" in timings and "load_optimizer_s" in timings:
        load_s = timings["load_model_s"] + timings["load_optimizer_s"]
    plan = result.plan or {}
    estimate = {k: v for k, v in (plan.get("estimate") or {}).items() if k != "memory_plan"}
    dry_plan = plan.get("memory_plan") or {}
    pf.update(
        stage="loaded",
        load_s=load_s,
        **timings,
        dry_run_s=total,
        dry_run_status=result.status,
        dry_run_estimate=estimate,
        dry_run_plan_total_bytes=dry_plan.get("total") if isinstance(dry_plan, dict) else None,
        dry_run_peak_bytes=int(torch.cuda.max_memory_allocated()) if cuda else None,
        load_note="page cache warm (just written)",
    )


def smoke_verdict(out: Path) -> str:
    """What a smoke run's JSON files say about the full run: ``ok`` (every phase passed),
    ``eager`` (all passed but compile: it failed and phi2 fell back to eager, or phi2 was
    killed while compiling and phi1b passed or had no time left), ``fail`` (anything else)."""
    ph = {p: read_json(out / f"{p}.json") or {} for p in PHASES}
    bad = {p for p, v in ph.items() if v.get("status") != "ok"}
    phi2 = ph["phi2"]
    if not bad:
        return "eager" if phi2.get("compile_error") else "ok"
    slow = phi2.get("status") == "killed" and phi2.get("stage") == "train" and phi2.get("compile")
    if slow and bad <= {"phi2", "phi1b"} and ph["phi1b"].get("status") in ("ok", "skipped"):
        return "eager"
    return "fail"


# -- the report ------------------------------------------------------------------------------


def _f(value: Any, fmt: str, missing: str = "—") -> str:
    return missing if value is None else format(value, fmt)


def _bytes(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value / GIB:.1f} GiB" if value >= GIB / 10 else f"{value / (1 << 20):.1f} MiB"


def _secs(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _count(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value / 1e9:.2f}B" if value >= 1e8 else f"{value / 1e6:.2f}M"


def report(out: Path) -> str:
    """The markdown tables of the phase JSON files in ``out`` (also written to report.md)."""
    data = {p: read_json(out / f"{p}.json") for p in PHASES}
    env, mm = data["env"] or {}, data["matmul"] or {}
    smoke = any((d or {}).get("smoke") for d in data.values())
    lines = [f"## GPU proof{' — SMOKE (tiny shapes)' if smoke else ''}", ""]
    if env.get("status") == "ok":
        peak = env.get("peak_flops")
        if env.get("device") == "cuda":
            lines.append(
                f"Device: {env.get('device_name')} ({env.get('multiprocessors')} SMs, "
                f"{_bytes(env.get('total_memory_bytes'))}), {env.get('cpu_count')} CPU cores; "
                f"torch {env.get('torch')}, CUDA {env.get('cuda')}, Python {env.get('python')}; "
                f"dense bf16 peak (allllm's table) {_f(peak and peak / 1e12, '.0f')} TFLOP/s."
            )
        else:
            lines.append(
                f"Device: CPU — {env.get('device_name')}; torch {env.get('torch')} "
                "(no GPU: MFU against a dense bf16 peak does not apply)."
            )
    else:
        lines.append(f"env: {env.get('status', 'missing')} {env.get('reason') or ''}".rstrip())
    if mm.get("status") == "ok":
        peak = env.get("peak_flops")
        share = f" = {mm['ceiling_tflops'] * 1e12 / peak:.0%} of the peak" if peak else ""
        lines.append(
            f"Measured matmul ceiling: {mm['ceiling_tflops']:.4g} TFLOP/s ({mm['dtype']}, "
            f"{mm['n']}³, median of {mm['timed_batches']} batches of "
            f"{mm['products_per_batch']}){share}."
        )
    else:
        lines.append(f"matmul: {mm.get('status', 'missing')} {mm.get('reason') or ''}".rstrip())
    lines += [
        "",
        "| model | params | seq | micro × accum | precision | compile | steps | tokens/s | "
        "MFU vs peak | MFU vs ceiling | first step s | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    mem = [
        "| model | peak (max allocated) | plan | plan / peak | checkpoint GB | "
        "save s | load s (model + AdamW) |",
        "|---|---|---|---|---|---|---|",
    ]
    cols = [*BREAKDOWN, "other", "step"]
    brk = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    notes = []
    for phase in TRAIN_PHASES:
        d = data[phase]
        if d is None:
            continue
        title = (d.get("spec") or {}).get("title", phase)
        if d.get("status") != "ok" and "tokens_per_s" not in d:
            notes.append(f"- {title}: {d.get('status')} — {d.get('reason') or d.get('error')}")
            continue
        if d.get("status") != "ok":
            notes.append(f"- {title}: {d.get('status')} — {d.get('reason') or d.get('error')}")
        if d.get("compile_error"):
            notes.append(f"- {title}: compile failed, measured eager: {d['compile_error']}")
        lines.append(
            f"| {title} | {_count(d.get('parameters'))} | "
            f"{d.get('seq_len')} | {d.get('micro_batch')} × {d.get('accum')} | "
            f"{d.get('precision')} | {'on' if d.get('compile') else 'off'} | {d.get('steps')} | "
            f"{_f(d.get('tokens_per_s'), ',.0f')} | {_f(d.get('mfu_vs_peak'), '.1%')} | "
            f"{_f(d.get('mfu_vs_ceiling'), '.1%')} | {_secs(d.get('first_step_s'))} | "
            f"{_secs(d.get('compile_s'))} |"
        )
        mem.append(
            f"| {title} | {_bytes(d.get('peak_memory_bytes'))} | "
            f"{_bytes(d.get('plan_total_bytes'))} | "
            f"{_f(d.get('plan_vs_peak'), '.2f')} | "
            f"{_f(d.get('checkpoint_bytes') and d['checkpoint_bytes'] / 1e9, '.2f')} | "
            f"{_secs(d.get('save_s'))} | {_secs(d.get('load_s'))} |"
        )
        b = d.get("breakdown_ms") or {}
        brk.append(f"| {title} | " + " | ".join(_f(b.get(c), ".1f") for c in cols) + " |")
        for key in ("steps_note", "mfu_note", "plan_note", "peak_memory_note", "save_note"):
            if d.get(key):
                notes.append(f"- {title}: {d[key]}")
        if d.get("load_note", "").startswith("skipped"):
            notes.append(f"- {title}: load {d['load_note']}")
    lines += ["", *mem, "", "ms per optimizer step (mean over the steady steps):", "", *brk]
    goals = []
    for phase, want in (("phi2", 0.40), ("phi1b", 0.45)):  # issue 20's goals on one GPU
        d = data[phase] or {}
        if d.get("mfu_vs_peak") is not None:
            verdict = "met" if d["mfu_vs_peak"] >= want else "missed"
            goals.append(f"{phase} MFU {d['mfu_vs_peak']:.1%} vs ≥ {want:.0%}: {verdict}")
        if d.get("plan_vs_peak") is not None:
            verdict = "met" if abs(d["plan_vs_peak"] - 1) <= 0.10 else "missed"
            goals.append(f"{phase} plan / peak {d['plan_vs_peak']:.2f} (within 10%: {verdict})")
    if goals:
        lines += ["", "Goals (issue 20): " + "; ".join(goals) + "."]
    if notes:
        lines += ["", *notes]
    text = "\n".join(lines) + "\n"
    with contextlib.suppress(OSError):
        (out / "report.md").write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    main()
