"""Device and mixed precision: where the model runs and in which number format.

``train.precision``: ``auto`` is bf16 autocast on a CUDA device that supports
it, else fp16 autocast with a GradScaler, and fp32 on CPU/MPS; ``bf16-mixed``,
``fp16-mixed`` and ``fp32`` force a choice. Weights and optimizer state stay
fp32 (mixed precision only changes the compute), so checkpoints are the same
whatever precision trained them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from allllm.errors import ConfigError


def pick_device(requested: str | None = None, local_rank: int = 0) -> torch.device:
    """``--device`` or auto: cuda (this rank's GPU), then mps, then cpu."""
    if requested and requested != "auto":
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ConfigError(
                f"--device {requested!r} is not a torch device", "use cpu, cuda, cuda:N or mps"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda but no CUDA device is available", "use --device cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError("--device mps but MPS is not available", "use --device cpu")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class Precision:
    """The resolved precision of a run."""

    name: str  # bf16-mixed | fp16-mixed | fp32
    device_type: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(self.name)

    @property
    def uses_scaler(self) -> bool:
        return self.name == "fp16-mixed"

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.uses_scaler)


def resolve_precision(setting: str, device: torch.device) -> Precision:
    """Turn ``train.precision`` into what this device can do (clear error if it cannot)."""
    if setting == "auto":
        if device.type == "cuda":
            name = "bf16-mixed" if torch.cuda.is_bf16_supported() else "fp16-mixed"
        else:
            name = "fp32"
        return Precision(name, device.type)
    if setting == "fp16-mixed" and device.type == "cpu":
        raise ConfigError(
            "train.precision fp16-mixed is not supported on CPU",
            'use "bf16-mixed" or "fp32" (or "auto")',
        )
    if setting == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bf16", 'use "fp16-mixed" (or "auto")')
    return Precision(setting, device.type)
