"""Run the real ``allllm.train.session.train()`` in a scratch workspace and time its steps.

Used by bench_train.py. The workspace is a temporary folder holding the
tokenized Shakespeare corpus; each measured run gets its own checkpoint dir,
so every run starts from the same fresh weights and trains the same rows.

Timing happens from the outside, without touching ``src/``: for the length of
one ``train()`` call, ``ShardDataset.fetch``, ``torch.Tensor.backward``,
``torch.nn.utils.clip_grad_norm_`` and the trainer's ``make_optimizer`` are
wrapped (the wrapper registers forward hooks on the model and step hooks on the
optimizer), and the reporter's ``step`` callback marks the step boundaries.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from allllm.config import Config, TrainConfig, parse_config
from allllm.data.dataset import ShardDataset
from allllm.data.tokenize.run import tokenize
from allllm.train import session as trainer_mod
from allllm.train.metrics import METRICS_FILE
from allllm.train.options import QuietReporter, TrainOptions
from allllm.util.jsonl import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path("/work/shared/corpus/shakespeare")
PHASES = ("fetch", "forward", "backward", "clip", "optimizer")
QUIET = 0.95  # a step with a lower CPU share lost its cores to another process for a while


def workspace_config(
    workspace: Path, base: dict[str, Any], corpus: Path, run: str = "run"
) -> Config:
    """``base`` (a config dict) with absolute data/checkpoint paths inside ``workspace``."""
    data = json.loads(json.dumps(base))
    data["data"]["raw_path"] = str(corpus)
    data["data"]["dir"] = str(workspace / "data")
    data["checkpoint_dir"] = str(workspace / "checkpoints" / run)
    return parse_config(data, f"{workspace}/{run}.json", default_name=data.get("name", "bench"))


def prepare_workspace(workspace: Path, base: dict[str, Any], corpus: Path) -> tuple[float, Path]:
    """Tokenize ``corpus`` into ``workspace/data``; (seconds, the one ``.bin`` shard)."""
    started = time.perf_counter()
    summary = tokenize(workspace_config(workspace, base, corpus))
    seconds = time.perf_counter() - started
    bins = sorted((workspace / "data").glob("*.bin"))
    if len(summary.shards) != 1 or len(bins) != 1:
        raise SystemExit(f"expected one shard from {corpus}, got {len(summary.shards)}")
    return seconds, bins[0]


@dataclass
class StepTiming:
    seconds: float
    cpu_seconds: float  # process CPU time (all threads) spent in the step
    tokens: int
    phases: dict[str, float]


@dataclass
class StepClock:
    """Seconds per phase, accumulated between step boundaries."""

    steps: list[StepTiming] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    last: float | None = None
    last_cpu: float = 0.0
    first: float | None = None  # when the first step began

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] += seconds

    @contextlib.contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] += time.perf_counter() - start

    def begin(self) -> None:
        """Mark the start of the first step (the loop's own first boundary comes after it)."""
        self.first = self.last = time.perf_counter()
        self.last_cpu = time.process_time()
        self.phases = dict.fromkeys(PHASES, 0.0)

    def step_done(self, tokens: int) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        if self.last is not None:
            self.steps.append(StepTiming(now - self.last, cpu - self.last_cpu, tokens, self.phases))
        self.phases = dict.fromkeys(PHASES, 0.0)
        self.last, self.last_cpu = now, cpu

    def cpu_share(self, skip: int, threads: int) -> float:
        """CPU seconds over wall seconds x threads after ``skip`` steps: below ~0.95, other
        processes took cores from this one (the machine is shared)."""
        kept = self.steps[skip:]
        return sum(s.cpu_seconds for s in kept) / (threads * sum(s.seconds for s in kept))

    def quiet_steps(self, skip: int, threads: int, threshold: float = QUIET) -> list[StepTiming]:
        """Steps after ``skip`` during which this process had its cores (CPU share >= threshold)."""
        return [s for s in self.steps[skip:] if s.cpu_seconds >= threshold * threads * s.seconds]


def phase_means(steps: list[StepTiming]) -> dict[str, float]:
    """Mean seconds per step of each phase, of ``other`` (the rest) and of the whole ``step``."""
    if not steps:
        raise SystemExit("no measured steps: raise --steps")
    out = {p: sum(s.phases[p] for s in steps) / len(steps) for p in PHASES}
    out["step"] = sum(s.seconds for s in steps) / len(steps)
    out["other"] = out["step"] - sum(out[p] for p in PHASES)
    return out


class ClockReporter(QuietReporter):
    """A reporter that marks step boundaries on a :class:`StepClock`."""

    def __init__(self, clock: StepClock) -> None:
        super().__init__()
        self.clock = clock
        self.tokens = 0  # cumulative tokens at the last step (runs here start from scratch)

    def step(self, record: dict[str, Any]) -> None:
        self.clock.step_done(record["tokens"] - self.tokens)
        self.tokens = record["tokens"]
        super().step(record)


def fused_adamw(
    model: torch.nn.Module, train: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    """The trainer's optimizer (same groups, betas, eps), but with the fused kernel on any device."""
    from allllm.train.optim import param_groups

    return torch.optim.AdamW(
        param_groups(model, train.weight_decay),
        lr=train.lr,
        betas=tuple(train.betas),
        eps=1e-8,
        fused=True,
    )


@contextlib.contextmanager
def instrumented(
    clock: StepClock,
    *,
    detailed: bool,
    make_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    fetched: list[np.ndarray] | None = None,
) -> Iterator[None]:
    """Patch timers into the trainer for one ``train()`` call (restored on exit).

    ``detailed`` adds forward/backward/clip/optimizer timers (CPU only: on a GPU
    they would time kernel launches, not work). ``fetched`` collects the dataset
    rows of every micro-batch, in order.
    """
    original_fetch = ShardDataset.fetch
    original_make = trainer_mod.make_optimizer
    original_backward = torch.Tensor.backward
    original_clip = torch.nn.utils.clip_grad_norm_
    chosen_make = make_optimizer or original_make

    def fetch(self: ShardDataset, rows: Any) -> Any:
        if clock.last is None:
            clock.begin()  # the first fetch opens the first step
        start = time.perf_counter()
        out = original_fetch(self, rows)
        clock.add("fetch", time.perf_counter() - start)
        if fetched is not None:
            fetched.append(np.asarray(rows, dtype=np.int64).copy())
        return out

    def make(model: torch.nn.Module, train: Any, device: torch.device) -> torch.optim.Optimizer:
        optimizer = chosen_make(model, train, device)
        if detailed:
            marks: dict[str, float] = {}

            def before(name: str) -> Callable[..., None]:
                def hook(*_args: Any) -> None:
                    marks[name] = time.perf_counter()

                return hook

            def after(name: str) -> Callable[..., None]:
                def hook(*_args: Any) -> None:
                    clock.add(name, time.perf_counter() - marks.pop(name))

                return hook

            model.register_forward_pre_hook(before("forward"))
            model.register_forward_hook(after("forward"))
            optimizer.register_step_pre_hook(before("optimizer"))
            optimizer.register_step_post_hook(after("optimizer"))
        return optimizer

    def backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        original_backward(self, *args, **kwargs)
        clock.add("backward", time.perf_counter() - start)

    def clip(*args: Any, **kwargs: Any) -> torch.Tensor:
        start = time.perf_counter()
        out = original_clip(*args, **kwargs)
        clock.add("clip", time.perf_counter() - start)
        return out

    ShardDataset.fetch = fetch  # type: ignore[method-assign]
    trainer_mod.make_optimizer = make  # type: ignore[assignment]
    if detailed:
        torch.Tensor.backward = backward  # type: ignore[method-assign]
        torch.nn.utils.clip_grad_norm_ = clip  # type: ignore[assignment]
    try:
        yield
    finally:
        ShardDataset.fetch = original_fetch  # type: ignore[method-assign]
        trainer_mod.make_optimizer = original_make
        torch.Tensor.backward = original_backward  # type: ignore[method-assign]
        torch.nn.utils.clip_grad_norm_ = original_clip


@dataclass
class TrainRun:
    """One measured ``train()`` call."""

    tokens_per_s: float  # from metrics.jsonl, steps after the warm-up
    breakdown: dict[str, float]  # mean seconds per measured step (see phase_means)
    step_seconds: list[float]  # every step, warm-up included
    cpu_share: float  # see StepClock.cpu_share
    quiet: list[StepTiming]  # see StepClock.quiet_steps
    setup_s: float  # train() called -> first micro-batch fetched
    final_save_s: float  # last step done -> train() returned (checkpoint, rotation, close)
    records: list[dict[str, Any]]  # metrics.jsonl
    fetched: list[np.ndarray]  # dataset rows of every micro-batch


def window_tokens_per_s(records: list[dict[str, Any]], skip: int) -> float:
    """Tokens/s between the end of step ``skip`` and the last step, from metrics.jsonl."""
    if skip < 1:
        raise SystemExit("--warmup must be at least 1 (step 1 has no start time in metrics)")
    if len(records) <= skip + 1:
        raise SystemExit("too few steps for the warm-up: raise --steps")
    first, last = records[skip - 1], records[-1]
    return (last["tokens"] - first["tokens"]) / (last["time"] - first["time"])


def run_ours(
    cfg: Config,
    *,
    steps: int,
    warmup: int,
    device: str = "cpu",
    detailed: bool = True,
    make_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
) -> TrainRun:
    """One real ``train(cfg, TrainOptions(max_steps=steps))`` call, timed."""
    clock = StepClock()
    reporter = ClockReporter(clock)
    fetched: list[np.ndarray] = []
    started = time.perf_counter()
    with instrumented(clock, detailed=detailed, make_optimizer=make_optimizer, fetched=fetched):
        result = trainer_mod.train(cfg, TrainOptions(max_steps=steps, device=device), reporter)
    ended = time.perf_counter()
    if result.step != steps:
        raise SystemExit(f"train() stopped at step {result.step}, expected {steps}: {result}")
    records = read_jsonl(cfg.checkpoint_path / METRICS_FILE)
    return TrainRun(
        tokens_per_s=window_tokens_per_s(records, warmup),
        breakdown=phase_means(clock.steps[warmup:]),
        step_seconds=[s.seconds for s in clock.steps],
        cpu_share=clock.cpu_share(warmup, torch.get_num_threads()),
        quiet=clock.quiet_steps(warmup, torch.get_num_threads()),
        setup_s=(clock.first or ended) - started,
        final_save_s=ended - (clock.last or ended),
        records=records,
        fetched=fetched,
    )
