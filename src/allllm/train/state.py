"""``TrainState``: where training is, saved and restored whole as ``trainer_state.json``.

Everything a checkpoint holds besides the weights and the optimizer lives in
one object: the global step and tokens seen, the current run's plan with its
sampler position, the cumulative seen map, every rank's RNG state, the run's
config snapshot and tokenizer fingerprint, and the last losses. The trainer
updates it as it trains; the checkpoint code writes ``state_dict()`` and reads
it back with :meth:`TrainState.from_state_dict`, which migrates older formats
and refuses newer ones (:mod:`allllm.util.versions`). Plain data: reading a
state imports neither torch nor numpy (``status`` reads checkpoints too).

Format 5 — ``trainer_state.json``::

    format_version, step, tokens_seen, run_id, run_complete, run (the RunPlan),
    run_summary (the runs.jsonl line, once complete), rng [per rank], world_size,
    config (snapshot), tokenizer_fingerprint, seen {shard_id: record}, created,
    last {loss, val_loss}, ledger [{name, sha256, count}] (the document ledger's segments),
    eval_subsets [{run, run_id, step, shards {shard_id: [rows]}, rows}] (each completed run's
    frozen forgetting subset), anchor (the anchor pool: data/anchor_pool.py; null: never drawn),
    layout {kind: single} or {kind: sharded, world_size, files {path: bytes}, param_groups,
    grad_scaler} (train/checkpoint.py)

Format 4 had no ``layout``: its checkpoints are all of the single-file layout.

Format 3 had no ``eval_subsets`` (runs before have no frozen subset) and no ``anchor``.

Format 2 had no ``ledger`` (it is built from the seen shards at the next start).

Format 1 had no ``val_seed`` / ``val_fraction`` in its seen records; they are
migrated from the state's own config snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from allllm.data.seen import records_with_split
from allllm.errors import CheckpointError, DataError, FormatVersionError
from allllm.train.run_plan import RunPlan
from allllm.util.versions import UPGRADE_HINT, FileFormat

if TYPE_CHECKING:
    import torch

    from allllm.train.distributed import DistInfo


def snapshot_split(data: dict[str, Any]) -> tuple[int, float] | None:
    """(train.seed, data.val_fraction) of a trainer state's config snapshot, else its run's."""
    config = data.get("config") or {}
    seed = (config.get("train") or {}).get("seed")
    fraction = (config.get("data") or {}).get("val_fraction")
    if isinstance(seed, int) and isinstance(fraction, (int, float)):
        return seed, float(fraction)
    run = data.get("run") or {}
    if isinstance(run.get("val_seed"), int) and isinstance(run.get("val_fraction"), (int, float)):
        return run["val_seed"], float(run["val_fraction"])
    return None


def _pin_seen_splits(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 → 2: the seen records gain the split the checkpoint's config snapshot names.

    Version 1 stored no split per record; its runs used the config of their time, and
    this checkpoint's snapshot is the latest record of it (a one-time migration).
    """
    split = snapshot_split(data)
    seen = data.get("seen")
    if isinstance(seen, dict) and seen:
        if split is None:
            raise CheckpointError("version-1 trainer state without a config snapshot or run")
        data["seen"] = records_with_split(seen, split)
    return data


def _unbuilt_ledger(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 → 3: the state gains its document ledger's segments; a state written before
    the ledger existed has none built yet (``None``): the trainer builds it from the seen shards."""
    data.setdefault("ledger", None)
    return data


def _no_subsets(data: dict[str, Any]) -> dict[str, Any]:
    """Version 3 → 4: no frozen forgetting subsets (runs before have no matrix column) and no
    anchor pool drawn yet."""
    data.setdefault("eval_subsets", [])
    data.setdefault("anchor", None)
    return data


def _single_layout(data: dict[str, Any]) -> dict[str, Any]:
    """Version 4 → 5: every checkpoint before the sharded layout is one of single files."""
    data.setdefault("layout", {"kind": "single"})
    return data


#: the checkpoint layouts this allllm reads (train/checkpoint.py): "single" (model.safetensors
#: + optimizer.pt) and "sharded" (FSDP: model/ and optimizer/ safetensors shards)
KNOWN_LAYOUTS = ("single", "sharded")

#: trainer_state.json: version 2 stores each seen record's validation split; version 3 lists
#: the document ledger's segments; version 4 the forgetting subsets and the anchor pool;
#: version 5 the checkpoint's layout (so an allllm that predates a layout refuses it in one
#: line instead of taking its missing model.safetensors for corruption)
STATE_FORMAT = FileFormat(
    "trainer state",
    current=5,
    migrations={1: _pin_seen_splits, 2: _unbuilt_ledger, 3: _no_subsets, 4: _single_layout},
)
STATE_FORMAT_VERSION = STATE_FORMAT.current


@dataclass
class TrainState:
    """The training position of one checkpoint (see the module doc for the file it becomes)."""

    step: int = 0  # global optimizer steps
    tokens_seen: int = 0  # tokens trained, all runs
    run: RunPlan | None = None  # the current run (complete or pending), sampler position inside
    seen: dict[str, Any] = field(default_factory=dict)  # cumulative seen map: shard_id -> record
    rng: list[dict[str, Any]] = field(default_factory=list)  # every rank's RNG state
    world_size: int = 1
    config: dict[str, Any] = field(default_factory=dict)  # the run's config snapshot
    tokenizer_fingerprint: str | None = None
    run_summary: dict[str, Any] | None = None  # the run's runs.jsonl line once it is complete
    last_loss: float | None = None
    last_val_loss: float | None = None
    created: str | None = None
    # the document ledger's segments ({name, sha256, count}; data/ledger.py) as of this
    # checkpoint; None: a state of an allllm before the ledger (built from the seen shards)
    ledger: list[dict[str, Any]] | None = None
    # each completed run's frozen forgetting subset (train/forgetting.py), oldest first
    eval_subsets: list[dict[str, Any]] = field(default_factory=list)
    # the anchor pool (data/anchor_pool.py AnchorPool.to_dict()); None: nothing drawn yet
    anchor: dict[str, Any] | None = None
    # how the checkpoint's tensors are stored: {"kind": "single"}, or {"kind": "sharded",
    # "world_size", "files": {relative path: bytes}, "param_groups", "grad_scaler"} (FSDP)
    layout: dict[str, Any] = field(default_factory=lambda: {"kind": "single"})

    @property
    def run_complete(self) -> bool:
        return self.run is None or self.run.complete

    def split_for_legacy_records(self) -> tuple[int, float] | None:
        """The split version-1 seen records take: this checkpoint's config snapshot."""
        return snapshot_split(
            {"config": self.config, "run": self.run.to_dict() if self.run else {}}
        )

    @property
    def pending(self) -> RunPlan | None:
        """The run to finish first, when the checkpoint is in the middle of one."""
        return None if self.run_complete else self.run

    # -- the file -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The JSON object of ``trainer_state.json`` (current format)."""
        return {
            "format_version": STATE_FORMAT_VERSION,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "run_id": self.run.run_id if self.run else None,
            "run_complete": self.run_complete,
            "run": self.run.to_dict() if self.run else None,
            "run_summary": self.run_summary,
            "rng": self.rng,
            "world_size": self.world_size,
            "config": self.config,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "seen": self.seen,
            "created": self.created,
            "last": {"loss": self.last_loss, "val_loss": self.last_val_loss},
            "ledger": self.ledger,
            "eval_subsets": self.eval_subsets,
            "anchor": self.anchor,
            "layout": self.layout,
        }

    def load_state_dict(self, data: Any, where: str = "trainer_state.json") -> None:
        """Take every field from ``data`` (migrated when older; FormatVersionError when newer).

        A file that is not a trainer state at all is a CheckpointError (corrupt).
        """
        if STATE_FORMAT.version_of(data) is None:
            raise CheckpointError(f"{where}: not a trainer state (no format_version)")
        data = STATE_FORMAT.upgrade(data, where)
        try:
            run = RunPlan.from_dict(data["run"]) if data.get("run") is not None else None
            last = data.get("last") or {}
            self.step = _int(data["step"])
            self.tokens_seen = _int(data.get("tokens_seen", 0))
            self.run = run
            if run is not None and "run_complete" in data:
                run.complete = bool(data["run_complete"])
            self.seen = dict(data.get("seen") or {})
            self.rng = list(data.get("rng") or [])
            self.world_size = _int(data.get("world_size", 1))
            self.config = dict(data.get("config") or {})
            self.tokenizer_fingerprint = data.get("tokenizer_fingerprint")
            self.run_summary = data.get("run_summary")
            self.last_loss = last.get("loss")
            self.last_val_loss = last.get("val_loss")
            self.created = data.get("created")
            ledger = data.get("ledger")
            if ledger is not None and not isinstance(ledger, list):
                raise ValueError("ledger is not a list")
            self.ledger = None if ledger is None else [dict(x) for x in ledger]
            subsets = data.get("eval_subsets") or []
            if not isinstance(subsets, list):
                raise ValueError("eval_subsets is not a list")
            self.eval_subsets = [dict(x) for x in subsets]
            anchor = data.get("anchor")
            if anchor is not None and not isinstance(anchor, dict):
                raise ValueError("anchor is not an object")
            self.anchor = anchor
            layout = data.get("layout")
            if not isinstance(layout, dict) or not isinstance(layout.get("kind"), str):
                raise ValueError("layout is not an object with a kind")
            self.layout = dict(layout)
        except (KeyError, TypeError, ValueError, AttributeError, DataError) as exc:
            raise CheckpointError(f"{where}: malformed trainer state ({exc})") from None
        if self.layout["kind"] not in KNOWN_LAYOUTS:
            raise FormatVersionError(
                f"{where}: checkpoint layout {self.layout['kind']!r}, written by a newer allllm "
                f"(this one reads {', '.join(KNOWN_LAYOUTS)})",
                UPGRADE_HINT,
            )

    @classmethod
    def from_state_dict(cls, data: Any, where: str = "trainer_state.json") -> TrainState:
        state = cls()
        state.load_state_dict(data, where)
        return state

    # -- random numbers -------------------------------------------------------------------------
    def capture_rng(self, device: torch.device, info: DistInfo) -> None:
        """Store every rank's RNG state (collective: every rank must call it)."""
        from allllm.train.distributed import gather_objects

        self.rng = gather_objects(rng_state(device), info)
        self.world_size = info.world_size

    def restore_rng(self, device: torch.device, info: DistInfo) -> bool:
        """Put this rank's saved RNG state back; False (reseeded from the step) when the saved
        states are of another world size."""
        import torch

        if len(self.rng) == info.world_size:
            mine = self.rng[info.rank]
            torch.set_rng_state(torch.tensor(mine["torch"], dtype=torch.uint8))
            if device.type == "cuda" and "cuda" in mine:
                torch.cuda.set_rng_state(torch.tensor(mine["cuda"], dtype=torch.uint8), device)
            return True
        torch.manual_seed(self.step * 1_000_003 + info.rank)
        return False


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG state as plain lists (JSON, and loadable without pickles)."""
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state().tolist()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).tolist()
    return state


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    return value
