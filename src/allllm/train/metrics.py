"""What a training run leaves behind besides weights: metrics.jsonl, runs.jsonl, dashboards.

``metrics.jsonl`` (append-only, one object a line, docs/design.md, seen records and runs): ``step``,
``tokens`` (cumulative tokens trained), ``loss``, ``lr``, ``time`` (unix
seconds), plus ``run_id``, ``grad_norm``, ``tokens_per_s``, ``elapsed``, and
``val_loss`` on the steps where it was measured. After a crash the resumed run
writes the replayed steps again; readers keep the last line of each step.

``runs.jsonl`` (append-only): one line per finished run. It lives beside the
checkpoints and is never rotated.

TensorBoard (``train.tensorboard``) and Weights & Biases (``train.wandb``) are
used only when their packages are installed; otherwise one clear message.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from allllm.errors import ConfigError
from allllm.util.jsonl import append_jsonl

if TYPE_CHECKING:
    import torch

    from allllm.train.precision import Precision

METRICS_FILE = "metrics.jsonl"
RUNS_FILE = "runs.jsonl"
#: dense bf16/fp16 peak FLOP/s of known GPUs, for MFU
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def peak_flops(device: torch.device, precision: Precision) -> float | None:
    """Dense bf16/fp16 peak of known GPUs, for MFU (None on CPU or unknown cards)."""
    import torch

    if device.type != "cuda" or precision.autocast_dtype is None:
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


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
