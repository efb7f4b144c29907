"""What one ``allllm train`` invocation is asked to do, what it reports, and what it did.

The CLI builds :class:`TrainOptions` from its flags and a
:class:`Reporter` that draws progress; Python callers use
:class:`QuietReporter`, which only collects. :class:`TrainResult` is what the
invocation did (``train --json`` prints it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class Reporter(Protocol):
    """What ``train`` tells the user (the CLI draws it; tests collect it)."""

    def message(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...
    def run_started(self, info: dict[str, Any]) -> None: ...
    def step(self, record: dict[str, Any]) -> None: ...
    def evaluated(self, record: dict[str, Any]) -> None: ...
    def checkpoint_saved(self, path: str, step: int) -> None: ...
    def run_finished(self, summary: dict[str, Any]) -> None: ...


class QuietReporter:
    """Collects messages; prints nothing (library use, tests)."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.warnings: list[str] = []
        self.steps: list[dict[str, Any]] = []

    def message(self, text: str) -> None:
        self.messages.append(text)

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def run_started(self, info: dict[str, Any]) -> None:
        self.messages.append(f"run {info['run_id'][:12]} started")

    def step(self, record: dict[str, Any]) -> None:
        self.steps.append(record)

    def evaluated(self, record: dict[str, Any]) -> None:
        pass

    def checkpoint_saved(self, path: str, step: int) -> None:
        self.messages.append(f"checkpoint {path}")

    def run_finished(self, summary: dict[str, Any]) -> None:
        self.messages.append(f"run {summary['run_id'][:12]} finished")


@dataclass
class TrainOptions:
    """The options of one ``allllm train`` invocation."""

    only_new: bool = False
    shards: str | None = None
    max_steps: int | None = None
    max_tokens: int | None = None
    max_time: float | None = None
    dry_run: bool = False
    reset_optimizer: bool = False
    abandon_pending: bool = False
    from_checkpoint: Path | None = None
    device: str | None = None
    trust_unverified: bool = False
    start_fresh: bool = False  # no checkpoint usable: set them aside and train fresh weights
    device_memory: int | None = None  # dry run: plan for a device of this many bytes


@dataclass
class TrainResult:
    """What an invocation did; ``exit_code`` follows docs/design.md, exit codes."""

    status: str  # trained | nothing | bounded | signal | dry-run
    exit_code: int = 0
    step: int = 0
    tokens_seen: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: str | None = None
    stopped_by: str | None = None
    plan: dict[str, Any] | None = None
