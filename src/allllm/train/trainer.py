"""Deprecated path: ``allllm.train.trainer`` moved to :mod:`allllm.train.session` (also
``allllm.train(cfg, ...)``).

Kept for one release so scripts written against 0.1.0 keep working; it goes
in the next one.
"""

import warnings

from allllm.train.options import QuietReporter, TrainOptions, TrainResult
from allllm.train.session import train

__all__ = ["QuietReporter", "TrainOptions", "TrainResult", "train"]

warnings.warn(
    "allllm.train.trainer moved to allllm.train.session (or call allllm.train(cfg, ...)); the old "
    "path goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
