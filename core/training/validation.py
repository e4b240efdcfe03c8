"""Validation during training: the evaluation of core.evaluation, its pairs shared among
the processes of a distributed run."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils import data

from core.defaults import VAL_ITERS
from core.evaluation import evaluate_facialflow
from core.training.distributed import unwrap


def validate(
    model: nn.Module,
    dataset: data.Dataset,
    *,
    iters: int = VAL_ITERS,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    max_pairs: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float]:
    """Validation during training with evaluate.py's metrics (core.evaluation): facial, head and expression EPE
    and 1/3/5 px over the valid face-mask pixels (`{kind}_{metric}`), plus the reference
    protocol (`ffn_{metric}`, the paper's numbers), each averaged over pairs.

    `max_pairs` picks that many evenly spaced pairs. The pairs are shared among the
    processes of a distributed run and the means combined, so every rank must call this.
    The model runs autocast to `amp_dtype` (None: float32), the training run's precision.
    """
    indices = list(range(len(dataset)))
    if max_pairs is not None and max_pairs < len(indices):
        indices = sorted({int(i) for i in np.linspace(0, len(dataset) - 1, max_pairs).round()})
    kinds = (("facial", "facial"), ("head", "head"), ("expression", "expression"), ("ffn_protocol", "ffn"))
    metrics = ("epe", "1px", "3px", "5px")
    sums = torch.zeros(len(kinds) * (len(metrics) + 1), dtype=torch.float64)
    mine = indices[rank::world_size]
    if mine:
        # its own progress bar (rank 0): validation takes a while on CPUs
        results = evaluate_facialflow(
            unwrap(model),
            data.Subset(dataset, mine),
            iters=iters,
            device=device,
            amp_dtype=amp_dtype,
            progress=rank == 0,
        )
        for k, (kind, _) in enumerate(kinds):
            block = results.get(kind)
            if block:  # None: no pair with a face mask
                pairs = results["scored_pairs"][kind]
                base = k * (len(metrics) + 1)
                sums[base : base + len(metrics)] = torch.tensor([block[m] * pairs for m in metrics])
                sums[base + len(metrics)] = pairs
    if world_size > 1:
        sums = sums.to(device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    out = {}
    for k, (_, prefix) in enumerate(kinds):
        base = k * (len(metrics) + 1)
        count = sums[base + len(metrics)].item()
        for m, name in enumerate(metrics):
            out[f"{prefix}_{name}"] = sums[base + m].item() / count if count else float("nan")
    return out
