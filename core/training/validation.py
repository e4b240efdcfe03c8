"""Validation during training: the evaluation of core.evaluation, its pairs shared among
the processes of a distributed run."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils import data

from core.defaults import VAL_ITERS
from core.errors import UserError
from core.evaluation import evaluate_facialflow


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
    processes of a distributed run and the means combined, so every rank must call this; an
    error of one rank's pairs (a UserError for a damaged file, FileNotFoundError) is raised there and a
    UserError on every other rank, so that no rank is left waiting.
    The model runs autocast to `amp_dtype` (None: float32), the training run's precision.
    """
    indices = list(range(len(dataset)))
    if max_pairs is not None and max_pairs < len(indices):
        indices = sorted({int(i) for i in np.linspace(0, len(dataset) - 1, max_pairs).round()})
    kinds = (("facial", "facial"), ("head", "head"), ("expression", "expression"), ("ffn_protocol", "ffn"))
    metrics = ("epe", "1px", "3px", "5px")
    sums = torch.zeros(len(kinds) * (len(metrics) + 1), dtype=torch.float64)
    mine = indices[rank::world_size]
    error: UserError | FileNotFoundError | None = None
    if mine:
        try:
            # its own progress bar (rank 0): validation takes a while on CPUs
            results = evaluate_facialflow(
                model,  # evaluate_facialflow unwraps it
                data.Subset(dataset, mine),
                iters=iters,
                device=device,
                amp_dtype=amp_dtype,
                progress=rank == 0,
            )
        except (UserError, FileNotFoundError) as caught:  # a damaged or missing file of the split, or non-finite flow
            error = caught
        else:
            for k, (kind, _) in enumerate(kinds):
                block = results.get(kind)
                if block:  # None: no pair with a face mask
                    pairs = results["scored_pairs"][kind]
                    base = k * (len(metrics) + 1)
                    sums[base : base + len(metrics)] = torch.tensor([block[m] * pairs for m in metrics])
                    sums[base + len(metrics)] = pairs
    failed = float(error is not None)
    if world_size > 1:
        # the failure count travels with the sums: a rank that failed stops every rank, none waits for it
        packed = torch.cat([sums, torch.tensor([failed], dtype=sums.dtype)]).to(device)
        dist.all_reduce(packed)
        sums, failed = packed[:-1].cpu(), packed[-1].item()
    if error is not None:
        raise error
    if failed:
        raise UserError(f"validation failed in {failed:.0f} other process(es) of this run, which printed the error")
    out = {}
    for k, (_, prefix) in enumerate(kinds):
        base = k * (len(metrics) + 1)
        count = sums[base + len(metrics)].item()
        for m, name in enumerate(metrics):
            out[f"{prefix}_{name}"] = sums[base + m].item() / count if count else float("nan")
    return out
