"""Loss over a fixed set of rows, without touching the training RNG.

Used for validation during training (the run's validation rows and
``data.eval_shards``) and by ``allllm eval``. The model runs in eval mode
under ``torch.no_grad`` (no dropout, so no random numbers are drawn): a run
that evaluates and one that does not train bit for bit the same.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from allllm.data.dataset import ShardDataset
from allllm.train.distributed import DistInfo, all_reduce_max, all_reduce_sum

EVAL_MAX_TOKENS = 1 << 16  # validation per eval: a fixed, spread subset of about this many tokens


@torch.no_grad()
def evaluate_rows(
    model: torch.nn.Module,
    dataset: ShardDataset,
    rows: np.ndarray,
    *,
    micro_batch_size: int,
    device: torch.device,
    autocast: Callable[[], object],
    info: DistInfo | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[float, int]:
    """(sum of token losses, number of predicted tokens) over ``rows``, summed over ranks.

    Each rank evaluates ``rows[rank::W]``; ``progress`` is called with the rows done.
    """
    info = info or DistInfo()
    mine = np.asarray(rows, dtype=np.int64)[info.rank :: info.world_size]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    batches = [mine[i : i + micro_batch_size] for i in range(0, mine.size, micro_batch_size)]
    # equal numbers of forwards on every rank: under FSDP each forward is a collective
    n_batches = all_reduce_max(len(batches), info, device)
    try:
        for k in range(n_batches):
            batch = batches[k] if k < len(batches) else None
            if batch is None:  # this rank is out of rows: a dummy forward, not counted
                ids = torch.zeros((1, dataset.seq_len), dtype=torch.long)
                lengths = torch.ones(1, dtype=torch.long)
            else:
                ids, lengths = dataset.fetch(batch)
            ids = ids.to(device, non_blocking=True)
            lengths = lengths.to(device, non_blocking=True)
            with autocast():  # type: ignore[attr-defined]
                loss_sum, n = model(ids, lengths)
            if batch is None:
                continue
            total += float(loss_sum)
            count += int(n)
            if progress:
                progress(int(batch.size))
    finally:
        model.train(was_training)
    total, count_f = all_reduce_sum([total, float(count)], info, device)
    return total, int(count_f)


def capped_rows(rows: np.ndarray, max_tokens: int, seq_len: int) -> np.ndarray:
    """A fixed, evenly spread subset of ``rows`` of about ``max_tokens`` (validation stays cheap)."""
    rows = np.asarray(rows)
    limit = max(1, max_tokens // max(1, seq_len))
    if rows.size <= limit:
        return rows
    picks = np.unique(np.linspace(0, rows.size - 1, limit).round().astype(np.int64))
    return rows[picks]
