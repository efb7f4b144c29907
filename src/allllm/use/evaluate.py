"""``allllm eval``: loss and perplexity of a trained model over shards it never trained on.

By default the rows are the ones held out (docs/design.md, validation rows): the validation rows
of every shard the checkpoint has seen (and of the run it is in the middle of,
whose validation rows are held out just the same) plus every row of the
``data.eval_shards`` shards. ``--shards GLOB`` evaluates all rows of the
matching valid shards instead (any text you tokenized with the config).

The validation split of each shard is recomputed from the ``val_seed`` and
``val_fraction`` pinned in its seen record (or in the pending run's plan) — the
values its rows were held out with, whatever the config says now — and
the loss is the causal-LM loss of training (sum over predicted tokens / their
count), per shard and in total; perplexity is ``exp(loss)``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from allllm.errors import DataError

if TYPE_CHECKING:
    from allllm.config import Config
    from allllm.data.registry import ScanResult, ShardEntry
    from allllm.train.state import TrainState
    from allllm.use.trained import TrainedModel

Warn = Callable[[str], None]


class EvalProgress(Protocol):
    """Rows evaluated so far (the CLI draws a progress bar from it)."""

    def begin(self, total_rows: int) -> None: ...
    def advance(self, rows: int) -> None: ...
    def end(self) -> None: ...


@dataclass
class EvalPart:
    """The rows of one shard that are evaluated, and why they were chosen."""

    entry: ShardEntry
    rows: np.ndarray  # row numbers within the shard
    role: str  # validation | eval_shard | all


@dataclass
class EvalResult:
    """Loss over the chosen rows (``eval --json`` prints ``to_dict()``)."""

    loss: float
    perplexity: float
    tokens: int  # predicted tokens (targets) the loss averages over
    rows: int
    step: int
    checkpoint: str
    shards: list[dict[str, Any]] = field(default_factory=list)  # name, role, rows, tokens, loss

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def perplexity(loss: float) -> float:
    """``exp(loss)``; inf where it overflows (an untrained model on a huge vocabulary)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def _matches(entry: ShardEntry, pattern: str) -> bool:
    return fnmatch.fnmatch(entry.name, pattern) or any(
        fnmatch.fnmatch(f, pattern) for f in entry.files.values()
    )


def select_rows(
    cfg: Config,
    scan: ScanResult,
    state: TrainState,
    *,
    shards: str | None = None,
    warn: Warn | None = None,
) -> list[EvalPart]:
    """The shards and rows ``eval`` reads (see the module doc); a one-line error if none."""
    from allllm.data.row_filter import RowFilter, effective_rows

    def note(text: str) -> None:
        if warn:
            warn(text)

    parts: list[EvalPart] = []
    if shards is not None:
        matched = [e for e in scan.shards if _matches(e, shards)]
        for entry in matched:
            if entry.state == "duplicate":
                note(f"skipping {entry.name}: same shard_id as {entry.duplicate_of}")
            elif not entry.valid or not entry.n_rows:
                note(f"skipping {entry.name}: {entry.state}: {entry.reason or 'no rows'}")
            else:
                parts.append(EvalPart(entry, np.arange(entry.n_rows), "all"))
        if not parts:
            found = f"{len(matched)} matching shard(s), none valid" if matched else "no shard"
            raise DataError(
                f"--shards {shards!r}: {found} in {cfg.data_dir}",
                f"see `allllm status --model {cfg.name}` for shard names and states",
            )
        return parts
    # each shard's own split: its seen record's, or the (pending) run's that planned it
    splits = {sid: state.run.split_of(sid) for sid in state.run.shard_ids} if state.run else {}
    # ... and the rows its row filter dropped (validation rows holding trained documents)
    filters = dict(state.run.row_filters) if state.run else {}
    for sid, rec in state.seen.items():
        splits[sid] = (int(rec["val_seed"]), float(rec["val_fraction"]))
        filters[sid] = rec
    for entry in scan.shards:
        if entry.state not in ("new", "seen") or not entry.shard_id or not entry.n_rows:
            continue
        if entry.eval_only:
            parts.append(EvalPart(entry, np.arange(entry.n_rows), "eval_shard"))
        elif entry.shard_id in splits:
            row_filter = RowFilter.from_dict(filters.get(entry.shard_id))
            val = effective_rows(splits[entry.shard_id], entry.shard_id, entry.n_rows, row_filter)[
                1
            ]
            if val.size:
                parts.append(EvalPart(entry, val, "validation"))
    if not parts:
        raise DataError(
            f"nothing to evaluate: no validation rows in the shards checkpoint step "
            f"{state.step} has seen, and data.eval_shards matches no shard",
            "pass --shards GLOB to evaluate all rows of given shards",
        )
    return parts


def evaluate_model(
    trained: TrainedModel,
    *,
    shards: str | None = None,
    progress: EvalProgress | None = None,
    warn: Warn | None = None,
    trust_unverified: bool = False,
) -> EvalResult:
    """Loss and perplexity of ``trained`` over the rows :func:`select_rows` chooses."""
    from allllm.data.dataset import ShardDataset
    from allllm.data.registry import ScanSpec, TokenizerIdentity, scan_shards
    from allllm.data.seen import SeenMap
    from allllm.train.precision import resolve_precision
    from allllm.train.validation import evaluate_rows

    cfg, state = trained.cfg, trained.state
    ident = TokenizerIdentity.from_description(trained.tokenizer.describe())
    scan = scan_shards(
        cfg.data_dir,
        ScanSpec.from_config(cfg, ident),
        SeenMap.from_dict(state.seen, "checkpoint"),  # the bare shards map
        trust_unverified=trust_unverified,
    )
    parts = select_rows(cfg, scan, state, shards=shards, warn=warn)
    for entry in scan.verify([p.entry for p in parts]):  # changed files would give a wrong loss
        if warn:
            warn(f"skipping {entry.name}: invalid: {entry.reason}")
    parts = [p for p in parts if p.entry.state != "invalid"]
    if not parts:
        raise DataError("nothing to evaluate: every chosen shard failed its digest check")
    precision = resolve_precision(cfg.train.precision, trained.device)
    total_rows = sum(int(p.rows.size) for p in parts)
    if progress:
        progress.begin(total_rows)
    loss_sum, count, per_shard = 0.0, 0, []
    try:
        for part in parts:
            dataset = ShardDataset(
                [part.entry.source(cfg.data_dir)], vocab_limit=cfg.model.vocab_size
            )
            try:
                total, n = evaluate_rows(
                    trained.model,
                    dataset,
                    part.rows,
                    micro_batch_size=cfg.train.micro_batch_size,
                    device=trained.device,
                    autocast=precision.autocast,
                    progress=progress.advance if progress else None,
                )
            finally:
                dataset.close()
            loss_sum += total
            count += n
            per_shard.append(
                {
                    "name": part.entry.name,
                    "role": part.role,
                    "rows": int(part.rows.size),
                    "tokens": n,
                    "loss": total / n if n else None,
                }
            )
    finally:
        if progress:
            progress.end()
    if count == 0:
        raise DataError(
            "nothing to evaluate: the chosen rows hold no predicted tokens (rows of one token)"
        )
    loss = loss_sum / count
    return EvalResult(
        loss=loss,
        perplexity=perplexity(loss),
        tokens=count,
        rows=total_rows,
        step=trained.step,
        checkpoint=str(trained.checkpoint.path),
        shards=per_shard,
    )
