"""Deprecated path: ``allllm.status`` moved to :mod:`allllm.use.status` (also ``allllm.build_status``).

Kept for one release so scripts written against 0.1.0 keep working; it goes
in the next one.
"""

import warnings

from allllm.use.status import build_status

__all__ = ["build_status"]

warnings.warn(
    "allllm.status moved to allllm.use.status (or use allllm.build_status); the old path goes "
    "in the next release",
    DeprecationWarning,
    stacklevel=2,
)
