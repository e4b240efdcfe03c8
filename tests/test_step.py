"""core.training.step.train_step: the update it applies, against a gradient computed by hand.

A toy model predicts one constant flow per decoder (two parameters each), so the DecFlow loss
(core.loss) has a gradient written out in numpy below. With plain SGD at lr 1 the update is
minus the gradient the step hands to the optimiser: the clipped one, clipped after the
GradScaler's unscaling.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.loss import EXPRESSION_WEIGHT, HEAD_WEIGHT
from core.training.step import train_step

B, H, W = 2, 3, 4
CLIP_EPS = 1e-6  # clip_grad_norm_'s coefficient is clip / (norm + 1e-6)


class ConstantFlow(nn.Module):
    """One flow vector per decoder, the same at every pixel: `[B, 2, H, W]` from 2 parameters each."""

    def __init__(self) -> None:
        super().__init__()
        self.facial = nn.Parameter(torch.tensor([0.3, -0.2]))
        self.head = nn.Parameter(torch.tensor([0.1, 0.4]))

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, *, iters: int, amp_dtype=None):
        shape = (image1.shape[0], 2, *image1.shape[-2:])
        return [self.facial[None, :, None, None].expand(shape)], [self.head[None, :, None, None].expand(shape)]


def _batch(seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(2, B, 3, H, W, generator=generator) * 255
    flows = torch.rand(2, B, 2, H, W, generator=generator) * 2 - 1  # |flow| < 400: every pixel valid
    valid = torch.ones(B, H, W)
    return images[0], images[1], flows[0], flows[1], valid, valid, valid


def _hand_gradient(model: ConstantFlow, batch: tuple[torch.Tensor, ...]) -> np.ndarray:
    """d loss / d (facial, head) of `loss = mean|f - gt_f| + 0.8 mean|h - gt_h| + 1.5 mean|(f - h) - (gt_f - gt_h)|`
    (means over all B*2*H*W elements, one prediction of weight gamma**0 = 1), in numpy."""
    f = model.facial.detach().numpy().astype(np.float64)[None, :, None, None]
    h = model.head.detach().numpy().astype(np.float64)[None, :, None, None]
    gt_f, gt_h = (batch[k].numpy().astype(np.float64) for k in (2, 3))
    n = gt_f.size
    expression = np.sign((f - h) - (gt_f - gt_h))
    grad_f = (np.sign(f - gt_f) + EXPRESSION_WEIGHT * expression).sum(axis=(0, 2, 3)) / n
    grad_h = (HEAD_WEIGHT * np.sign(h - gt_h) - EXPRESSION_WEIGHT * expression).sum(axis=(0, 2, 3)) / n
    return np.concatenate([grad_f, grad_h])


@pytest.mark.parametrize("scale", [None, 2.0**12], ids=["no scaler", "GradScaler 4096"])
@pytest.mark.parametrize("clip", [0.05, 100.0], ids=["clipped", "under the clip"])
def test_the_update_is_the_gradient_clipped_to_clip_after_unscaling(scale, clip) -> None:
    model = ConstantFlow()
    batch = _batch()
    before = torch.cat([model.facial.detach(), model.head.detach()]).numpy().astype(np.float64)
    gradient = _hand_gradient(model, batch)
    norm = float(np.linalg.norm(gradient))
    assert 0.05 < norm < 100.0  # the two cases: clipped, and left alone
    scaler = torch.amp.GradScaler("cpu", init_scale=scale or 1.0, enabled=scale is not None)
    optimizer = torch.optim.SGD([model.facial, model.head], lr=1.0)
    result = train_step(
        model,
        batch,
        optimizer=optimizer,
        scaler=scaler,
        iters=1,
        gamma=0.85,
        clip=clip,
        device=torch.device("cpu"),
        distributed=False,
    )
    assert result.skipped is None and not result.scaler_skipped
    assert result.metrics["grad_norm"] == pytest.approx(norm, rel=1e-5)  # the norm before clipping, unscaled
    expected = before - gradient * min(1.0, clip / (norm + CLIP_EPS))
    after = torch.cat([model.facial.detach(), model.head.detach()]).numpy()
    np.testing.assert_allclose(after, expected, rtol=0, atol=1e-6)
    if clip < norm:
        assert np.linalg.norm(after - before) == pytest.approx(clip, rel=1e-4)  # the step's length is the clip
