"""The tokenize pipeline: plan what changed, encode in parallel, write shards through a journal.

``tokenize(cfg)`` is the library call behind ``allllm tokenize``; the modules
below it are ``plan`` (what is up to date, appended or changed), ``encode``
(raw pieces → token ids on every core), ``write`` (rows → ``.jsonl`` / ``.bin``
/ meta), ``journal`` (nothing half-written is ever taken for a shard),
``rebuilt`` (a rebuild of a shard that exists is discarded, not kept beside it) and
``summary`` (progress callbacks and the run's summary).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# loaded on first use: the registry imports ``journal`` and must not pay for the pipeline
_EXPORTS = {
    "tokenize": "allllm.data.tokenize.run",
    "TIMING_STAGES": "allllm.data.tokenize.summary",
    "NoProgress": "allllm.data.tokenize.summary",
    "ShardSummary": "allllm.data.tokenize.summary",
    "TokenizeProgress": "allllm.data.tokenize.summary",
    "TokenizeSummary": "allllm.data.tokenize.summary",
}

__all__ = [
    "TIMING_STAGES",
    "NoProgress",
    "ShardSummary",
    "TokenizeProgress",
    "TokenizeSummary",
    "tokenize",
]

if TYPE_CHECKING:
    from allllm.data.tokenize.run import tokenize
    from allllm.data.tokenize.summary import (
        TIMING_STAGES,
        NoProgress,
        ShardSummary,
        TokenizeProgress,
        TokenizeSummary,
    )


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'allllm.data.tokenize' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
