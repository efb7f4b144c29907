"""Named fault points for the fault-injection test suite (never active in normal use).

``ALLLLM_FAULT=<point>[:<n>[:enospc]]`` makes the process SIGKILL itself the
n-th time (default: first) it passes ``fault_point("<point>")`` — exactly what
a power cut or an OOM kill does at that moment — or, with ``enospc``, fail
there as a full disk does (``OSError(ENOSPC)``). Points that corrupt values
instead of stopping the process take ``nan`` (the n-th pass only) or
``nan-every`` (every pass from the n-th on): ``ALLLLM_FAULT=train.grad:3:nan``
turns the gradients of the 3rd optimizer step of this process into NaN
(:func:`inject_nan`); ``ALLLLM_FAULT_RANK=<k>`` limits any fault to rank k (torchrun's ``RANK``, or a
tokenize job's rank, ``ALLLLM_RANK``). The suite uses it to prove
that no crash point loses data, trains a shard twice or leaves a half-written
file that a later run would trust. Without the variable a fault point costs
one environment lookup.
"""

from __future__ import annotations

import errno
import os
import signal

_ENV = "ALLLLM_FAULT"
_counts: dict[str, int] = {}


def _target() -> tuple[str, int, str] | None:
    spec = os.environ.get(_ENV, "")
    if not spec:
        return None
    name, _, rest = spec.partition(":")
    nth, _, action = rest.partition(":")
    return name, int(nth) if nth.isdigit() else 1, action or "kill"


def fault_point(name: str) -> None:
    """Fail here if ``ALLLLM_FAULT`` names this point and this is the n-th pass.

    Call it where an ``OSError`` would be handled as a write failure, so the
    ``enospc`` action exercises the same path a full disk does.
    """
    target = _target()
    if target is None or target[0] != name or target[2].startswith("nan"):
        return
    only = os.environ.get("ALLLLM_FAULT_RANK")
    if only and only != (os.environ.get("RANK") or os.environ.get("ALLLLM_RANK", "0")):
        return  # one rank of a tokenize job or a training run fails, the others go on
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] < target[1]:
        return
    if target[2] == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device (injected)")
    os.kill(os.getpid(), signal.SIGKILL)


def inject_nan(name: str) -> bool:
    """True when ``ALLLLM_FAULT`` asks for NaN values at this pass of ``name``."""
    target = _target()
    if target is None or target[0] != name or target[2] not in ("nan", "nan-every"):
        return False
    only = os.environ.get("ALLLLM_FAULT_RANK")
    if only and only != os.environ.get("RANK", "0"):
        return False  # one rank's gradients only: the skip must still be decided together
    _counts[name] = _counts.get(name, 0) + 1
    due = _counts[name] == target[1] if target[2] == "nan" else _counts[name] >= target[1]
    return due


POINTS = (
    "train.grad",  # nan / nan-every: this optimizer step's gradients are NaN (on every rank)
    "train.step",  # inside an optimizer step: gradients computed, weights not yet updated
    "checkpoint.files",  # checkpoint files written to the temporary directory, not renamed
    "checkpoint.renamed",  # checkpoint directory renamed into place, no completion marker yet
    "checkpoint.rotate",  # an old checkpoint renamed for deletion, not yet deleted
    "train.before_seen",  # the run's final checkpoint is durable, seen records not written
    "train.before_runs",  # seen records written, runs.jsonl line not yet
    "ledger.segment",  # a run's ledger segment renamed into place, no checkpoint lists it yet
    "ledger.merge",  # a merged ledger segment renamed into place, no checkpoint lists it yet
    "tokenize.journal",  # a journal entry's temporary written, not yet renamed into place
    "tokenize.rows",  # a shard's rows partly written
    "tokenize.renamed",  # data files renamed into place, meta not yet
    "tokenize.docs",  # .docs sidecar renamed into place (data files too), meta not yet
    "tokenize.meta",  # meta in place, journal entry not yet removed
)
