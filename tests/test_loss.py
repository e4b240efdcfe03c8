"""core.loss.sequence_loss against hand-computed values."""

import math

import pytest
import torch

from core.loss import MAX_FLOW, sequence_loss


def flow(*pixels):
    """[1, 2, 1, W] flow from (x, y) pixel tuples."""
    return torch.tensor(pixels, dtype=torch.float32).T.reshape(1, 2, 1, len(pixels))


def example():
    # pixel 0 ordinary; pixel 1: facial gt magnitude 500 >= MAX_FLOW (invalid for facial),
    # head gt valid there.
    gt_f = flow((3, 4), (0, 500))
    gt_h = flow((1, 0), (0, 0))
    valid_f = torch.tensor([[[1.0, 1.0]]])
    valid_h = torch.tensor([[[1.0, 1.0]]])
    facial = [flow((0, 0), (0, 0)), flow((3, 3), (10, 10))]
    head = [flow((0, 0), (0, 0)), flow((1, 1), (7, 7))]
    return facial, head, gt_f, gt_h, valid_f, valid_h


def test_hand_computed_loss_and_metrics():
    facial, head, gt_f, gt_h, valid_f, valid_h = example()
    loss, m = sequence_loss(facial, head, gt_f, gt_h, valid_f, valid_h, gamma=0.5)
    # 4 elements (B*2*H*W) in every mean; weights 0.5 (first prediction), 1 (last).
    # facial: pred0 |0-3|+|0-4| = 7 -> 1.75 ; pred1 |3-3|+|3-4| = 1 -> 0.25   (pixel 1 masked: |gt| = 500)
    facial_loss = 0.5 * 7 / 4 + 1 / 4
    # head (both pixels valid): pred0 1 + 0 -> 0.25 ; pred1 (0+1) + (7+7) = 15 -> 3.75
    head_loss = 0.5 * 1 / 4 + 15 / 4
    # expression over valid_head (the reference's mask): gt = (2, 4), (0, 500)
    # pred0 expr (0,0),(0,0): 6 + 500 ; pred1 expr (2,2),(3,3): 2 + (3 + 497)
    expression_loss = 0.5 * 506 / 4 + 502 / 4
    expected = facial_loss + 0.8 * head_loss + 1.5 * expression_loss
    assert expected == pytest.approx(287.35)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert m["loss"] == pytest.approx(expected, rel=1e-6)
    assert m["facial_loss"] == pytest.approx(facial_loss)
    assert m["head_loss"] == pytest.approx(head_loss)
    assert m["expression_loss"] == pytest.approx(expression_loss)
    # metrics of the final prediction, each over its own valid pixels
    assert m["facial_epe"] == pytest.approx(1.0)  # pixel 0 only: error (0, -1)
    assert (m["facial_1px"], m["facial_3px"], m["facial_5px"]) == (0.0, 1.0, 1.0)
    # head over valid_head (both pixels): errors 1 and sqrt(98); the reference would
    # report 1.0 here (head over the facial mask).
    assert m["head_epe"] == pytest.approx((1 + math.sqrt(98)) / 2)
    assert (m["head_1px"], m["head_3px"], m["head_5px"]) == (0.0, 0.5, 0.5)
    # expression over valid_f & valid_h (pixel 0): error (0, -2)
    assert m["expression_epe"] == pytest.approx(2.0)
    assert (m["expression_1px"], m["expression_3px"], m["expression_5px"]) == (0.0, 1.0, 1.0)


def test_valid_threshold_and_4d_valid():
    facial, head, gt_f, gt_h, _, _ = example()
    valid_f = torch.tensor([[[0.5, 1.0]]])  # 0.5 counts as valid
    valid_h = torch.tensor([[[[1.0, 0.49]]]])  # [B, 1, H, W] accepted; 0.49 invalid
    loss, m = sequence_loss(facial, head, gt_f, gt_h, valid_f, valid_h, gamma=0.5)
    facial_loss = 0.5 * 7 / 4 + 1 / 4
    head_loss = 0.5 * 1 / 4 + 1 / 4
    expression_loss = 0.5 * 6 / 4 + 2 / 4
    assert loss.item() == pytest.approx(facial_loss + 0.8 * head_loss + 1.5 * expression_loss)
    assert m["head_epe"] == pytest.approx(1.0)


def test_max_flow_boundary_and_empty_metrics():
    gt = flow((MAX_FLOW, 0.0))  # magnitude exactly 400: invalid (strict <)
    pred = [flow((0.0, 0.0))]
    loss, m = sequence_loss(pred, pred, gt, torch.zeros_like(gt), torch.ones(1, 1, 1), torch.ones(1, 1, 1), 0.85)
    # facial masked out; head exact; expression term uses valid_head: |0 - 400| / 2 elements
    assert loss.item() == pytest.approx(1.5 * 400 / 2)
    assert math.isnan(m["facial_epe"]) and math.isnan(m["expression_epe"])
    assert m["head_epe"] == 0.0


def test_gamma_weights_and_gradients():
    torch.manual_seed(0)
    gt_f, gt_h = torch.randn(2, 2, 8, 8), torch.randn(2, 2, 8, 8)
    valid = torch.ones(2, 8, 8)
    preds_f = [torch.randn(2, 2, 8, 8, requires_grad=True) for _ in range(3)]
    preds_h = [torch.randn(2, 2, 8, 8, requires_grad=True) for _ in range(3)]
    loss, _ = sequence_loss(preds_f, preds_h, gt_f, gt_h, valid, valid, gamma=0.85)
    expected = 0.0
    for i in range(3):
        w = 0.85 ** (2 - i)
        f = (preds_f[i] - gt_f).abs().mean()
        h = (preds_h[i] - gt_h).abs().mean()
        e = ((preds_f[i] - preds_h[i]) - (gt_f - gt_h)).abs().mean()
        expected = expected + w * (f + 0.8 * h + 1.5 * e)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in preds_f + preds_h)


def test_mismatched_prediction_lists():
    with pytest.raises(ValueError):
        sequence_loss(
            [], [], torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1), torch.ones(1, 1, 1), torch.ones(1, 1, 1), 0.85
        )
