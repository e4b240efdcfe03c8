"""DecFlow training loss: a gamma-weighted L1 over the sequence of predictions of both decoders.

For N predictions, prediction i (0-based) has weight ``gamma ** (N - i - 1)`` and
contributes, with ``MAX_FLOW = 400``::

    valid_f = (valid_facial >= 0.5) & (|flow_facial| < MAX_FLOW)     # [B, H, W]
    valid_h = (valid_head   >= 0.5) & (|flow_head|   < MAX_FLOW)     # |.| = per-pixel L2 norm
    facial     = mean(valid_f[:, None] * |pred_f - flow_facial|)       # mean over B*2*H*W
    head       = mean(valid_h[:, None] * |pred_h - flow_head|)
    expression = mean(valid_h[:, None] * |(pred_f - pred_h) - (flow_facial - flow_head)|)
    loss      += w_i * (facial + 0.8 * head + 1.5 * expression)

This is the reference arithmetic, including its normalisation (the mean runs over all
elements, invalid ones included, as zeros) and its use of the head mask alone for the
expression term. The metrics differ from the reference on purpose: the reference reports
as "epe" the head prediction against the head ground truth over the facial mask; here
facial, head and expression EPE are each measured on their own valid pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MAX_FLOW = 400.0
HEAD_WEIGHT = 0.8
EXPRESSION_WEIGHT = 1.5
THRESHOLDS = (1, 3, 5)


def valid_mask(valid: torch.Tensor, flow_gt: torch.Tensor, max_flow: float = MAX_FLOW) -> torch.Tensor:
    """Boolean ``[B, H, W]``: ``valid >= 0.5`` and ground-truth magnitude below ``max_flow``."""
    magnitude = flow_gt.square().sum(dim=1).sqrt()
    return (valid >= 0.5) & (magnitude < max_flow)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``mean(valid[:, None] * |pred - target|)`` over all ``B*2*H*W`` elements (reference normalisation)."""
    return (valid[:, None] * (pred - target).abs()).mean()


def epe_metrics(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, prefix: str) -> dict[str, float]:
    """End-point error and share of pixels under 1/3/5 px, over the pixels where ``valid``.

    With no valid pixel the values are NaN (nothing was measured).
    """
    epe = (pred - target).square().sum(dim=1).sqrt()[valid]
    if epe.numel() == 0:
        return {f"{prefix}_epe": float("nan"), **{f"{prefix}_{t}px": float("nan") for t in THRESHOLDS}}
    return {f"{prefix}_{name}": value for name, value in endpoint_metrics(epe).items()}


def endpoint_metrics(epe: torch.Tensor) -> dict[str, float]:
    """Mean of per-pixel end-point errors `epe` (non-empty) and the shares under 1/3/5 px
    (keys `epe`, `1px`, `3px`, `5px`)."""
    return {"epe": epe.mean().item(), **{f"{t}px": (epe < t).float().mean().item() for t in THRESHOLDS}}


def sequence_loss(
    facial_preds: Sequence[torch.Tensor],
    head_preds: Sequence[torch.Tensor],
    flow_facial: torch.Tensor,
    flow_head: torch.Tensor,
    valid_facial: torch.Tensor,
    valid_head: torch.Tensor,
    gamma: float = 0.8,
    max_flow: float = MAX_FLOW,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The DecFlow loss (module docstring) and metrics of the final predictions.

    Args:
        facial_preds, head_preds: lists of N predictions ``[B, 2, H, W]`` (first to last).
        flow_facial, flow_head: ground truth ``[B, 2, H, W]``.
        valid_facial, valid_head: ``[B, H, W]`` (1 = valid; ``[B, 1, H, W]`` is accepted too).
        gamma: sequence weight decay (0.85 in the paper's recipe).

    Returns:
        ``(loss, metrics)``: the scalar loss tensor, and floats ``loss``,
        ``facial_loss``, ``head_loss``, ``expression_loss`` (gamma-weighted sums of the
        terms), ``facial_epe``/``_1px``/``_3px``/``_5px`` (facial prediction vs facial
        ground truth over ``valid_f``), the same for ``head`` (over ``valid_h``) and for
        ``expression`` (facial minus head, over ``valid_f & valid_h``).
    """
    if len(facial_preds) != len(head_preds) or not facial_preds:
        raise ValueError(
            f"need as many facial as head predictions (>= 1), got {len(facial_preds)} and {len(head_preds)}"
        )
    if valid_facial.dim() == 4:
        valid_facial = valid_facial[:, 0]
    if valid_head.dim() == 4:
        valid_head = valid_head[:, 0]
    valid_f = valid_mask(valid_facial, flow_facial, max_flow)
    valid_h = valid_mask(valid_head, flow_head, max_flow)
    flow_expression = flow_facial - flow_head

    n_predictions = len(facial_preds)
    facial_loss = head_loss = expression_loss = flow_facial.new_zeros(())
    for i, (pred_f, pred_h) in enumerate(zip(facial_preds, head_preds)):
        weight = gamma ** (n_predictions - i - 1)
        pred_f, pred_h = pred_f.float(), pred_h.float()
        facial_loss = facial_loss + weight * masked_l1(pred_f, flow_facial, valid_f)
        head_loss = head_loss + weight * masked_l1(pred_h, flow_head, valid_h)
        expression_loss = expression_loss + weight * masked_l1(pred_f - pred_h, flow_expression, valid_h)
    loss = facial_loss + HEAD_WEIGHT * head_loss + EXPRESSION_WEIGHT * expression_loss

    with torch.no_grad():
        final_f, final_h = facial_preds[-1].detach().float(), head_preds[-1].detach().float()
        metrics = {
            "loss": loss.item(),
            "facial_loss": facial_loss.item(),
            "head_loss": head_loss.item(),
            "expression_loss": expression_loss.item(),
        }
        metrics.update(epe_metrics(final_f, flow_facial, valid_f, "facial"))
        metrics.update(epe_metrics(final_h, flow_head, valid_h, "head"))
        metrics.update(epe_metrics(final_f - final_h, flow_expression, valid_f & valid_h, "expression"))
    return loss, metrics
