"""Scale-out under torchrun: the process group and the collectives the trainer uses.

Started with ``torchrun --nproc-per-node N -m allllm train ...`` (multi-node
through torchrun's rendezvous), every rank runs the same code: rank 0 plans the
run and broadcasts it, ranks take strided slices of each global batch, only
rank 0 writes checkpoints and records, and decisions to stop are collective so
no rank waits forever in a collective the others left. A plain ``allllm
train`` is world size 1 with no process group at all. How the model itself is
spread over the ranks (DDP or FSDP2) is :mod:`allllm.train.parallelize`.

Collectives time out after ``ALLLLM_DIST_TIMEOUT_S`` seconds (default 3600: the
other ranks wait while rank 0 writes a checkpoint of tens of GB, longer than torch's
default of 10 or 30 minutes allows). A failure of rank 0 reaches the others instead
of leaving them waiting: :func:`run_on_rank0` hands every rank rank 0's outcome,
an exception of any kind included, and on leaving :func:`process_group` rank 0
posts how it left in the group's store (not a collective: the others may be
anywhere), which the others read before their last barrier — so a final checkpoint
that fails on rank 0 (a full disk) stops every rank with one line.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from allllm.errors import AllllmError, ConfigError, TrainingError

TIMEOUT_ENV = "ALLLLM_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 3600.0  # a 33 GB checkpoint on a slow disk, with room to spare
_EXIT_KEY = "allllm/rank0_exit"  # rank 0 posts "ok" or its failure here on leaving the group
_ACK_WAIT_S = 10.0  # how long a failing rank 0 that hosts the store waits for the others to read
_exits = 0  # process groups entered by this process (store keys stay apart)
_TOLD = "_allllm_told_ranks"  # set on an exception run_on_rank0 already broadcast


class Rank0Failed(TrainingError):
    """Rank 0 failed: the other ranks stop with its error instead of waiting for it."""


@dataclass(frozen=True)
class _Failure:
    """What the other ranks learn of rank 0's exception (plain strings: always picklable)."""

    kind: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> _Failure:
        text = exc.one_line() if isinstance(exc, AllllmError) else str(exc)
        return cls(type(exc).__name__, " ".join(text.split()) or "(no message)")

    def error(self) -> Rank0Failed:
        return Rank0Failed(
            f"rank 0 failed: {self.kind}: {self.message}",
            "this rank stopped with it; rank 0's own output says more",
        )


@dataclass
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_dist_info() -> DistInfo:
    """Rank and world size from torchrun's environment (defaults: a single process)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def dist_timeout() -> timedelta:
    """How long a collective may wait: ``ALLLLM_DIST_TIMEOUT_S`` seconds (default 3600)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 10**8:  # also NaN
        raise ConfigError(
            f"{TIMEOUT_ENV}={raw!r} is not a number of seconds above 0",
            f"set it to e.g. {DEFAULT_TIMEOUT_S:.0f}, or unset it for that default",
        )
    return timedelta(seconds=seconds)


@contextlib.contextmanager
def process_group(info: DistInfo, device: torch.device) -> Iterator[None]:
    """Initialise the default process group for the block (nccl on CUDA, gloo on CPU)."""
    global _exits
    if not info.enabled or dist.is_initialized():
        yield
        return
    timeout = dist_timeout()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend, rank=info.rank, world_size=info.world_size, timeout=timeout
    )
    _exits += 1
    key = f"{_EXIT_KEY}/{_exits}"
    try:
        try:
            yield
        except BaseException as exc:
            if info.is_main:
                _post_failure(key, exc, info)
            raise
        # free the model, its hooks and their gloo work now, not at interpreter exit
        gc.collect()
        _exit_handshake(key, info, timeout)
        # leave together: a rank tearing its connections down while rank 0 still writes the
        # last checkpoint makes gloo abort ("terminate called without an active exception")
        dist.barrier()
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _store() -> Any:
    return dist.distributed_c10d._get_default_store()


def _post_failure(key: str, exc: BaseException, info: DistInfo) -> None:
    """Rank 0 leaves with ``exc``: say so in the store, where ranks at the exit read it.

    Best effort, never raising over ``exc``. When rank 0's process hosts the store (a
    launch without torchrun's agent), it waits a little for the others to read it first.
    """
    if getattr(exc, _TOLD, False):
        return  # run_on_rank0 told every rank already; they are not at the exit
    with contextlib.suppress(Exception):
        store = _store()
        failure = _Failure.of(exc)
        store.set(key, f"{failure.kind}\n{failure.message}")
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
            acks = [f"{key}/read/{r}" for r in range(1, info.world_size)]
            store.wait(acks, timedelta(seconds=_ACK_WAIT_S))


def _exit_handshake(key: str, info: DistInfo, timeout: timedelta) -> None:
    """Rank 0 posts "ok"; the others wait for its word and raise :class:`Rank0Failed` if it
    failed (a final checkpoint it could not write) rather than wait in a barrier forever."""
    store = _store()
    if info.is_main:
        store.set(key, "ok")
        return
    try:
        store.wait([key], timeout)
        word = store.get(key).decode("utf-8", "replace")
    except Exception as exc:  # timed out, or the store left with rank 0's process
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise Rank0Failed(
            f"rank 0 did not finish the run within {timeout.total_seconds():.0f} s ({why})",
            f"rank 0's output says why; raise {TIMEOUT_ENV} if it was still writing",
        ) from None
    with contextlib.suppress(Exception):
        store.set(f"{key}/read/{info.rank}", "1")
    if word != "ok":
        kind, _, message = word.partition("\n")
        raise _Failure(kind, message).error()


def run_on_rank0(info: DistInfo, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 and hand its result, or its failure, to every rank.

    A user error reaches every rank as itself. Any other exception: rank 0 re-raises
    its own, the others raise :class:`Rank0Failed` naming it, so none waits in a
    collective rank 0 has left.
    """
    result: Any = None
    if info.is_main:
        try:
            result = fn()
        except AllllmError as exc:
            result = exc
        except BaseException as exc:
            if info.enabled:
                with contextlib.suppress(Exception):  # a broken group: rank 0's error first
                    broadcast_object(_Failure.of(exc), info)
                    setattr(exc, _TOLD, True)
            raise
    result = broadcast_object(result, info)
    if isinstance(result, AllllmError):
        if info.enabled:
            setattr(result, _TOLD, True)  # every rank raises it: none waits at the exit
        raise result
    if isinstance(result, _Failure):
        raise result.error()
    return result


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (in rank order) on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Element-wise sum over ranks (float64)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(value: int, info: DistInfo, device: torch.device) -> int:
    """The largest ``value`` of any rank."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if it is true on any rank (collective stop decisions)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
