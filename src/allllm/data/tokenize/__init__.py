"""The tokenize pipeline: plan what changed, encode in parallel, write shards through a journal.

``tokenize(cfg)`` is the library call behind ``allllm tokenize``; the modules
below it are ``plan`` (what is up to date, appended or changed), ``encode``
(raw pieces → token ids on every core), ``write`` (rows → ``.jsonl`` / ``.bin``
/ meta), ``journal`` (nothing half-written is ever taken for a shard) and
``summary`` (progress callbacks and the run's summary).
"""

from allllm.data.tokenize.run import tokenize
from allllm.data.tokenize.summary import (
    TIMING_STAGES,
    NoProgress,
    ShardSummary,
    TokenizeProgress,
    TokenizeSummary,
)

__all__ = [
    "TIMING_STAGES",
    "NoProgress",
    "ShardSummary",
    "TokenizeProgress",
    "TokenizeSummary",
    "tokenize",
]
