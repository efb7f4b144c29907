"""Checkpoints on disk (docs/design.md: checkpoints): written whole or not at all, found by step.

Layout of ``checkpoints/<name>/step-NNNNNNNN/`` (global optimizer steps), one process and DDP::

    model.safetensors     weights (a tied head is stored once, under embed.weight)
    optimizer.pt          optimizer and grad-scaler state; loadable with weights_only=True
    trainer_state.json    the TrainState: run, position, RNG states, config snapshot, seen map
    COMPLETE              the completion marker, written last

Under FSDP the weights and optimizer state are ``model/`` and ``optimizer/`` folders of
safetensors shards, one per rank (train/sharded_checkpoint.py), and trainer_state.json's
``layout`` lists them; every reader here learns the layout from that file first.

A checkpoint is written into a hidden temporary directory, every file is
fsynced, the directory is renamed into place and the marker is written last.
"Latest" is the highest step with a marker whose files all load; an incomplete
one (an interrupted save) is skipped, a corrupt one is skipped with a warning
and the previous one is used. A trainer state of a newer format is never
skipped: it stops everything with one line (:mod:`allllm.util.versions`).
Rotation keeps the newest ``keep`` checkpoints and never deletes the newest one
or the one a pending run started from (``--abandon-pending`` goes back to it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allllm.errors import CheckpointError
from allllm.train.checkpoint_layout import sharded_problem
from allllm.train.state import TrainState
from allllm.util.atomic import fsync_dir, set_umask_mode
from allllm.util.faults import fault_point

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.json"
MARKER_FILE = "COMPLETE"
STEP_RE = re.compile(r"^step-(\d{8})$")

Warn = Callable[[str], None]


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint directory (complete or not) found on disk."""

    path: Path
    step: int

    @property
    def complete(self) -> bool:
        return (self.path / MARKER_FILE).is_file()

    def read_state(self) -> TrainState:
        """The checkpoint's :class:`TrainState` (CheckpointError if missing or unreadable;
        FormatVersionError if a newer allllm wrote it)."""
        path = self.path / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing") from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable ({exc})") from None
        state = TrainState.from_state_dict(data, str(path))
        if state.step != self.step:
            raise CheckpointError(f"{path}: says step {state.step}, directory says {self.step}")
        return state


def list_checkpoints(directory: Path) -> list[CheckpointRef]:
    """Every ``step-NNNNNNNN`` directory, complete or not, by step."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    refs = []
    for entry in entries:
        m = STEP_RE.match(entry.name)
        if m and entry.is_dir():
            refs.append(CheckpointRef(Path(entry.path), int(m[1])))
    return sorted(refs, key=lambda r: r.step)


def check_files(ref: CheckpointRef) -> str | None:
    """Why a complete-looking checkpoint cannot be used, or None (either layout).

    A trainer state of a newer format or an unknown layout raises FormatVersionError.
    """
    path = ref.path / STATE_FILE
    if not path.is_file() or path.stat().st_size == 0:
        return f"{STATE_FILE} missing or empty"
    try:
        state = ref.read_state()
    except CheckpointError as exc:
        return str(exc)
    if state.layout["kind"] == "sharded":
        return sharded_problem(ref.path, state.layout)
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        path = ref.path / name
        if not path.is_file() or path.stat().st_size == 0:
            return f"{name} missing or empty"
    try:
        from safetensors import safe_open

        # the header is checked whatever the framework; numpy keeps `status` free of torch
        with safe_open(str(ref.path / MODEL_FILE), framework="numpy") as fh:
            fh.keys()
    except Exception as exc:  # safetensors raises several types for a damaged header
        return f"{MODEL_FILE} unreadable ({type(exc).__name__})"
    return None


def checkpoint_problems(directory: Path) -> list[tuple[CheckpointRef, str | None]]:
    """Every checkpoint by step, with why it cannot be used (None: usable).

    A trainer state of a newer format raises (FormatVersionError) instead: it is
    not a problem of the checkpoint, and no caller may skip it.
    """
    out: list[tuple[CheckpointRef, str | None]] = []
    for ref in list_checkpoints(directory):
        if not ref.complete:
            out.append((ref, f"incomplete (no {MARKER_FILE} marker)"))
        else:
            out.append((ref, check_files(ref)))
    return out


def latest_checkpoint(directory: Path, warn: Warn | None = None) -> CheckpointRef | None:
    """The highest complete, readable checkpoint; broken ones are skipped with a warning.

    Only checked down to the first usable one: older checkpoints are not read.
    """
    refs = list_checkpoints(directory)
    for i in range(len(refs) - 1, -1, -1):
        ref = refs[i]
        if not ref.complete:
            if warn:
                warn(f"{ref.path.name}: incomplete (no {MARKER_FILE} marker), skipped")
            continue
        problem = check_files(ref)
        if problem:
            if warn:
                then = "falling back to the previous checkpoint" if i else "skipped"
                warn(f"{ref.path.name}: corrupt ({problem}), {then}")
            continue
        return ref
    return None


def find_checkpoint(path: Path) -> CheckpointRef:
    """A checkpoint named by the user (``--from-checkpoint DIR``); it must be complete and readable."""
    m = STEP_RE.match(path.name)
    if not path.is_dir() or not m:
        raise CheckpointError(
            f"{path}: not a checkpoint directory",
            "point --from-checkpoint at a checkpoints/<name>/step-NNNNNNNN folder",
        )
    ref = CheckpointRef(path, int(m[1]))
    if not ref.complete:
        raise CheckpointError(f"{path}: incomplete checkpoint (no {MARKER_FILE} marker)")
    problem = check_files(ref)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    return ref


# -- writing --------------------------------------------------------------------------------------


def begin_save(directory: Path, step: int, job: str) -> Path:
    """A fresh temporary directory for ``step``, named by the job (all ranks write into it)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{step_dir_name(step)}.tmp-{job}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def save_checkpoint(
    directory: Path,
    step: int,
    *,
    model_state: dict[str, Any] | None,
    optimizer_state: dict[str, Any] | None,
    train_state: TrainState,
    tmp: Path | None = None,
) -> CheckpointRef:
    """Write ``step-NNNNNNNN`` atomically; raise CheckpointError (previous ones intact) on failure.

    Sharded layout: the ranks wrote their shards into ``tmp`` (:func:`begin_save`), listed in
    ``train_state.layout``; the state is added and the directory committed here.
    """
    final = directory / step_dir_name(step)
    tmp = tmp or begin_save(directory, step, str(os.getpid()))
    sharded = train_state.layout["kind"] == "sharded"
    try:
        names = [STATE_FILE]
        if not sharded:
            import torch
            from safetensors.torch import save_file

            assert model_state is not None and optimizer_state is not None
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}
            save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "pt", "step": str(step)})
            set_umask_mode(tmp / MODEL_FILE)  # safetensors writes it 0600
            torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
            names += [MODEL_FILE, OPTIMIZER_FILE]
        else:
            names += list(train_state.layout["files"])  # the ranks fsynced their files
            for sub in {Path(n).parent for n in train_state.layout["files"]}:
                fsync_dir(tmp / sub)
        if train_state.step != step:
            raise ValueError(f"saving step {step} with a train state at step {train_state.step}")
        state_text = json.dumps(train_state.state_dict())
        (tmp / STATE_FILE).write_text(state_text, encoding="utf-8")
        for name in names:
            _fsync_file(tmp / name)
        fsync_dir(tmp)
        fault_point("checkpoint.files")
        old = None
        if final.exists():  # an incomplete leftover, or a re-save of this step: move it aside
            old = directory / f".{final.name}.old-{os.getpid()}-{time.time_ns()}"
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(directory)
        fault_point("checkpoint.renamed")
        marker = final / MARKER_FILE
        marker.write_text(f"{step}\n", encoding="utf-8")
        _fsync_file(marker)
        fsync_dir(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        what = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise CheckpointError(
            f"cannot save checkpoint {final}: {what}",
            "free space (or fix permissions); the previous checkpoint is intact and is used next time",
        ) from exc
    return CheckpointRef(final, step)


def clean_temporaries(directory: Path) -> None:
    """Remove temporary directories left by a save that was killed (we hold the lock)."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith(".step-") and (".tmp-" in entry.name or ".old-" in entry.name):
            shutil.rmtree(entry.path, ignore_errors=True)


def run_end_steps(refs: list[CheckpointRef]) -> list[int]:
    """Steps of the complete checkpoints that end a run (``run_complete``), oldest first."""
    steps = []
    for ref in refs:
        try:
            data = json.loads((ref.path / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # unreadable: rotation treats it as any other checkpoint
        if isinstance(data, dict) and data.get("run_complete") is True:
            steps.append(ref.step)
    return steps


def rotate_checkpoints(
    directory: Path,
    keep: int,
    protect: set[int],
    warn: Warn | None = None,
    *,
    keep_runs: int | str = 0,
) -> list[int]:
    """Delete complete checkpoints beyond the newest ``keep`` (never those in ``protect``).

    ``keep_runs`` (``train.keep_run_checkpoints``): the final checkpoints of the last N runs
    ("all": of every run) are kept too, so a user can go back to "after run k".
    Incomplete directories older than the newest complete checkpoint are removed too.
    Returns the deleted steps.
    """
    refs = list_checkpoints(directory)
    complete = [r for r in refs if r.complete]
    if not complete:
        return []
    newest = complete[-1].step
    keep_steps = {r.step for r in complete[-max(1, keep) :]} | protect | {newest}
    if keep_runs == "all" or (isinstance(keep_runs, int) and keep_runs > 0):
        ends = run_end_steps(complete)
        keep_steps |= set(ends if keep_runs == "all" else ends[-int(keep_runs) :])
    deleted = []
    for ref in refs:
        if ref.step in keep_steps:
            continue
        if not ref.complete and ref.step > newest:
            continue  # may become a checkpoint of its own later; never ours to judge
        # rename first so a crash mid-delete never leaves a half-deleted "complete" checkpoint
        doomed = directory / f".{ref.path.name}.old-{os.getpid()}-{time.time_ns()}"
        try:
            os.replace(ref.path, doomed)
            fault_point("checkpoint.rotate")
            shutil.rmtree(doomed, ignore_errors=True)
            deleted.append(ref.step)
        except OSError as exc:
            if warn:
                warn(f"could not delete old checkpoint {ref.path.name}: {exc.strerror}")
    if deleted:
        fsync_dir(directory)
    return deleted


def load_model_state(ref: CheckpointRef) -> dict[str, Any]:
    """The whole weights of a checkpoint of either layout (CPU tensors, read by this process)."""
    if ref.read_state().layout["kind"] == "sharded":
        from allllm.train.sharded_checkpoint import read_full_weights

        return read_full_weights(ref.path)
    from safetensors.torch import load_file

    try:
        return load_file(str(ref.path / MODEL_FILE))
    except Exception as exc:  # damaged file: one clear line
        raise CheckpointError(
            f"{ref.path / MODEL_FILE}: unreadable ({type(exc).__name__}: {exc})"
        ) from None


def load_optimizer_state(ref: CheckpointRef) -> dict[str, Any]:
    """Single layout: optimizer/scaler state, loaded with ``weights_only=True`` (a crafted pickle
    cannot run code) and memory-mapped (the pages are the page cache's, shared by every rank of
    a node that reads the file, not a private copy each)."""
    import pickle

    import torch

    path = ref.path / OPTIMIZER_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused or unreadable ({first[:200]})",
            "use --reset-optimizer to start fresh optimizer moments, or an earlier checkpoint",
        ) from None


def checkpoint_summary(directory: Path, warn: Warn | None = None) -> dict[str, Any] | None:
    """The latest checkpoint as ``status`` shows it (docs/design.md, JSON outputs); reads JSON only, no torch."""
    ref = latest_checkpoint(directory, warn=warn)
    if ref is None:
        return None
    state = ref.read_state()
    pending, splits, run = None, {}, state.pending
    if run is not None:
        pending = {"run_id": run.run_id, "shards": run.shard_ids}
        pending.update(steps_done=run.steps_done, steps_total=run.total_steps)
        splits = {sid: list(run.split_of(sid)) for sid in run.shard_ids}
    return {
        "step": ref.step,
        "tokens_seen": state.tokens_seen,
        "path": str(ref.path),
        "time": state.created,
        "pending_run": pending,
        "seen": state.seen,
        # not shown: the splits status counts with (version-1 seen records, the pending run)
        "legacy_split": state.split_for_legacy_records(),
        "pending_splits": splits,
        "ledger": state.ledger,  # its document ledger's segments (None: not built yet)
        "eval_subsets": state.eval_subsets,  # the forgetting matrix's columns
        "anchor": state.anchor,  # the anchor pool (None: nothing drawn yet)
    }
