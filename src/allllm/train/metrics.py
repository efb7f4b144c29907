"""What a training run leaves behind besides weights: metrics.jsonl, runs.jsonl, dashboards.

``metrics.jsonl`` (append-only, one object a line, docs/design.md, seen records and runs): ``step``,
``tokens`` (cumulative tokens trained), ``loss``, ``lr``, ``time`` (unix
seconds), plus ``run_id``, ``grad_norm``, ``tokens_per_s``, ``elapsed``, and
``val_loss`` on the steps where it was measured. After a crash the resumed run
writes the replayed steps again; readers keep the last line of each step.

Throughput keys: ``tokens_per_s`` is the whole job's (tokens of every rank over
the step's wall time, which leaves out checkpoint saves and evals);
``tokens_per_s_per_device`` is that divided by the world size; ``mfu`` is per
device — ``tokens_per_s_per_device × flops_per_token / peak`` with the PaLM
FLOPs convention (:func:`allllm.model.sizes.flops_per_token`) and the dense
bf16/fp16 peak of :func:`peak_flops_for_name`. It is left out on CPUs, without
autocast and on GPUs not in the table: no MFU rather than a wrong one.
``grad_norm`` is the global L2 norm of the gradient before clipping, the same on
every rank (:mod:`allllm.train.grad_clip`).

``runs.jsonl`` (append-only): one line per finished run. It lives beside the
checkpoints and is never rotated.

TensorBoard (``train.tensorboard``) and Weights & Biases (``train.wandb``) are
used only when their packages are installed; otherwise one clear message.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from allllm.errors import ConfigError
from allllm.util.jsonl import append_jsonl

if TYPE_CHECKING:
    import torch

    from allllm.train.precision import Precision

METRICS_FILE = "metrics.jsonl"
RUNS_FILE = "runs.jsonl"
#: dense (no sparsity) bf16/fp16 tensor-core peak FLOP/s per GPU, from NVIDIA's data sheets,
#: matched in order against ``torch.cuda.get_device_name()`` (upper-cased). Word boundaries
#: keep "A10" from matching "A100" or "A10G" and "H200" from matching "GH200".
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    (r"\bH100\b.*\bNVL\b", 835e12),  # NVIDIA H100 NVL
    (r"\bH100\b.*\bPCIE\b", 756e12),  # NVIDIA H100 PCIe
    (r"\bH100\b.*\b(SXM\w*|HBM3)\b", 989e12),  # NVIDIA H100 80GB HBM3, H100 SXM5 ...
    (r"\bH200\b.*\bNVL\b", 835e12),  # NVIDIA H200 NVL
    (r"\bH200\b", 989e12),  # NVIDIA H200 (SXM)
    (r"\bA100\b", 312e12),  # A100-SXM4-80GB, A100 80GB PCIe, A100-PCIE-40GB
    (r"\bL4\b", 121e12),  # NVIDIA L4 (not L40 / L40S)
    (r"\bA10\b", 125e12),  # NVIDIA A10 (the A10G is another chip: unknown)
)


def peak_flops_for_name(name: str) -> float | None:
    """The dense bf16/fp16 peak of the GPU that reports ``name``, or None when unknown.

    Pure, so tests can pin the table; unknown names give None and no MFU is shown.
    """
    upper = name.upper()
    return next((peak for pattern, peak in PEAK_FLOPS if re.search(pattern, upper)), None)


def peak_flops(device: torch.device, precision: Precision) -> float | None:
    """Dense bf16/fp16 peak of this GPU, for MFU (None on CPU, without autocast, or unknown)."""
    import torch

    if device.type != "cuda" or precision.autocast_dtype is None:
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device))


def step_mfu(tokens_per_s: float, world_size: int, flops_per_token: float, peak: float) -> float:
    """Model FLOPs utilisation per device: the job's ``tokens_per_s`` is split over its ranks
    before it meets one device's ``peak`` (8 GPUs at 40% read 40%, not 320%)."""
    return tokens_per_s / max(world_size, 1) * flops_per_token / peak


class MetricsLog:
    """Writes metrics (rank 0 only) to metrics.jsonl and the optional dashboards."""

    def __init__(
        self, checkpoint_dir: Path, *, tensorboard: bool, wandb: bool, run_name: str, config: dict
    ) -> None:
        self.path = checkpoint_dir / METRICS_FILE
        self.runs_path = checkpoint_dir / RUNS_FILE
        self._tb = None
        self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "train.tensorboard is on but TensorBoard is not installed",
                    "pip install tensorboard, or set train.tensorboard to false",
                ) from None
            self._tb = SummaryWriter(log_dir=str(checkpoint_dir / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_mod
            except ImportError:
                raise ConfigError(
                    "train.wandb is on but wandb is not installed",
                    "pip install wandb, or set train.wandb to false",
                ) from None
            self._wandb = wandb_mod.init(
                project="allllm", name=run_name, config=config, resume="allow"
            )

    def log(self, record: dict[str, Any]) -> None:
        append_jsonl(self.path, record)
        step = int(record["step"])
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "time"):
                    self._tb.add_scalar(f"train/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def log_run(self, record: dict[str, Any]) -> None:
        append_jsonl(self.runs_path, record, durable=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
