"""The facial, head and expression flow of every pair of consecutive frames of a sequence."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from core.errors import UserError
from core.inference import Estimator
from core.utils.batching import batches_of_one_size
from core.utils.frames import Frame, check_same_size

FLOW_KINDS = ("facial", "head", "expression")


class PairFlow(NamedTuple):
    """The flows of one pair of frames, each `[H, W, 2]` float32 (x, y)."""

    first: Frame
    second: Frame
    facial: np.ndarray
    head: np.ndarray
    expression: np.ndarray

    @property
    def flows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.facial, self.head, self.expression


def consecutive_pairs(frames: Iterator[Frame]) -> Iterator[tuple[Frame, Frame]]:
    """(frame i, frame i+1) for every i; UserError naming both when their sizes differ."""
    previous = next(frames, None)
    for current in frames:
        check_same_size(previous.label, previous.rgb, current.label, current.rgb)
        yield previous, current
        previous = current


def sequence_flows(
    estimator: Estimator, frames: Iterator[Frame], *, batch_size: int = 1, warm_start: bool = False
) -> Iterator[PairFlow]:
    """The flow of every pair of consecutive frames, in order, estimated `batch_size` pairs (of
    one size) at a time, as evaluation batches them. `warm_start` (batch 1 only) starts each pair
    from the previous pair's low-resolution flows, each decoder from its own."""
    previous_low: tuple[torch.Tensor, torch.Tensor] | None = None
    pairs = consecutive_pairs(frames)
    for batch in batches_of_one_size(pairs, batch_size=batch_size, size=lambda pair: pair[0].rgb.shape):
        image1, image2 = (
            torch.stack([torch.from_numpy(pair[k].rgb).permute(2, 0, 1) for pair in batch]).float() for k in (0, 1)
        )  # [B, 3, H, W] each
        flows = estimator(image1, image2, flow_init=previous_low if warm_start else None)
        previous_low = (flows.facial_low, flows.head_low)
        arrays = [f.permute(0, 2, 3, 1).cpu().numpy() for f in (flows.facial, flows.head, flows.expression)]
        yield from (PairFlow(first, second, *(a[k] for a in arrays)) for k, (first, second) in enumerate(batch))


def check_flows_finite(pair: PairFlow) -> None:
    """UserError naming the pair when one of its flows has a NaN or an infinity."""
    for kind, flow in zip(FLOW_KINDS, pair.flows):
        if not np.isfinite(flow).all():
            raise UserError(
                f"non-finite {kind} flow (NaN or inf) for the pair {pair.first.label} -> {pair.second.label}; "
                "nothing written for it"
            )
