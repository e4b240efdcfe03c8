"""The model inside DataParallel / DistributedDataParallel wrappers.

Below core.checkpoint, core.evaluation and core.training, which all need the bare model
(its weights, its config) whatever wraps it for training."""

from __future__ import annotations

from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside an nn.DataParallel or DistributedDataParallel wrapper (else `model`)."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model
