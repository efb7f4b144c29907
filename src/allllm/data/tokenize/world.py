"""Who this tokenize process is among many: its rank, the world size and the job it belongs to.

One launcher-neutral description, read from (highest first) the CLI's ``--rank`` /
``--world-size`` / ``--job-id``, torchrun's environment (``RANK``, ``WORLD_SIZE``,
``TORCHELASTIC_RUN_ID``), or Slurm's (``SLURM_PROCID``, ``SLURM_NTASKS``,
``SLURM_JOB_ID``); a lone process is rank 0 of 1 with a fresh job id. No collective is
ever used (tokenize stays free of torch): ranks meet through files in the data dir.

``simultaneous`` tells a process group (torchrun, srun: every rank runs at once, so rank 0
may wait for the others' summaries) from job-array tasks given ``--rank`` by hand, which
may run one after the other and each report only their own part.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from allllm.errors import ConfigError

__all__ = ["World", "resolve_world"]

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    job_id: str
    launcher: str  # "single", "torchrun", "slurm" or "flags"
    simultaneous: bool  # every rank runs at the same time (a process group)
    host: str
    pid: int
    local_size: int = 1  # processes of the job on this machine (they share its cores)

    @property
    def is_single(self) -> bool:
        return self.world_size == 1


def _int(env: Mapping[str, str], key: str) -> int | None:
    value = env.get(key)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"environment variable {key}={value!r} is not a number",
            f"unset {key} or set it to the process's rank / count",
        ) from None


def resolve_world(
    rank: int | None = None,
    world_size: int | None = None,
    job_id: str | None = None,
    env: Mapping[str, str] | None = None,
) -> World:
    """This process's place among the tokenize processes (see the module docstring)."""
    env = os.environ if env is None else env
    host, pid = socket.gethostname(), os.getpid()
    if rank is not None or world_size is not None:
        if rank is None or world_size is None:
            raise ConfigError(
                "--rank and --world-size go together",
                "give both (e.g. --rank 0 --world-size 4), or neither",
            )
        launcher, simultaneous = "flags", False
        job = job_id or env.get("SLURM_ARRAY_JOB_ID")
        if job is None and world_size > 1:
            raise ConfigError(
                f"--rank {rank} --world-size {world_size} needs --job-id",
                "give every task of the array the same --job-id (e.g. $SLURM_ARRAY_JOB_ID)",
            )
    elif "WORLD_SIZE" in env and "RANK" in env:
        rank, world_size = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        launcher, simultaneous = "torchrun", True
        run_id = env.get("TORCHELASTIC_RUN_ID")
        job = job_id or (run_id if run_id not in (None, "", "none") else None)
        job = job or env.get("SLURM_JOB_ID")
        if job is None and env.get("MASTER_ADDR") and env.get("MASTER_PORT"):
            job = f"{env['MASTER_ADDR']}-{env['MASTER_PORT']}"  # torchrun without --rdzv-id
        if job is None and world_size and world_size > 1:
            raise ConfigError(
                "RANK and WORLD_SIZE are set but nothing names the job its ranks share",
                "launch with torchrun (or srun), or pass the same --job-id to every rank",
            )
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world_size = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
        launcher, simultaneous = "slurm", True
        job = job_id or env.get("SLURM_JOB_ID", "") + "." + env.get("SLURM_STEP_ID", "0")
    else:
        rank, world_size, launcher, simultaneous = 0, 1, "single", True
        job = job_id
    assert rank is not None and world_size is not None
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(
            f"rank {rank} of world size {world_size} is out of range",
            "the rank must be 0 .. world size - 1",
        )
    job = job or f"{host}-{pid}-{uuid.uuid4().hex[:8]}"
    job = re.sub(r"[^A-Za-z0-9._-]", "_", job)
    if not _JOB_ID.match(job):
        raise ConfigError(
            f"job id {job!r} is not usable as a file name",
            "use letters, digits, '.', '_' and '-' (at most 128)",
        )
    local = _int(env, "LOCAL_WORLD_SIZE") or _int(env, "SLURM_NTASKS_PER_NODE") or 1
    if launcher in ("single", "flags"):
        local = 1
    return World(rank, world_size, job, launcher, simultaneous, host, pid, max(1, local))
