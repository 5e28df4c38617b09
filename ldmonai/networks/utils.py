"""Helpers for networks that training may have wrapped."""

from __future__ import annotations

from torch.nn.parallel import DistributedDataParallel


def unwrap(obj):
    """The model inside a DistributedDataParallel wrapper; anything else as it is.

    Saved weights and sampling calls use the bare model, so checkpoints load the same with
    or without DDP and methods other than ``forward`` stay reachable.
    """
    return obj.module if isinstance(obj, DistributedDataParallel) else obj
