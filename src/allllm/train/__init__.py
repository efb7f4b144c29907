"""Training: one ``allllm train`` invocation, its runs, the loop, checkpoints, parallelism.

``session`` drives an invocation (``train(cfg, options, reporter)``), ``start``
decides where it starts, ``planning`` plans a new run, ``loop`` trains its
steps, ``state`` is the :class:`~allllm.train.state.TrainState` a checkpoint
holds, ``checkpoint`` writes and finds checkpoints, ``parallelize`` applies
activation checkpointing, compile and DDP/FSDP2.

The package is callable: ``allllm.train(cfg, options=None, reporter=None)`` is
:func:`allllm.train.session.train` (the stable public name; ``allllm.train``
is this package once any of its modules is imported, so the name must work as
both). Importing it loads no torch.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    """This package, callable as :func:`allllm.train.session.train`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from allllm.train.session import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
