"""One optimisation step: forward, sequence loss, scaled backward, clipping, update; and
what it reports (refused updates, GradScaler skips)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from core.loss import sequence_loss
from core.training.distributed import any_across_ranks


def build_optimizer(
    parameters: list[nn.Parameter], *, lr: float, wdecay: float, epsilon: float, num_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The reference's optimiser: AdamW, and a one-cycle schedule with linear annealing."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=wdecay, eps=epsilon, **adamw_kernels(parameters))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        lr,
        total_steps=num_steps + 100,  # as the reference: the schedule never reaches its end
        pct_start=0.05,  # 5 % warm-up
        cycle_momentum=False,
        anneal_strategy="linear",
    )
    return optimizer, scheduler


def adamw_kernels(parameters: list[nn.Parameter]) -> dict[str, bool]:
    """How AdamW updates its ~160 tensors (stage 1): on CUDA one fused kernel per step (which also reads
    the GradScaler's inf check on the device instead of synchronising), elsewhere the
    multi-tensor `foreach` kernels instead of a Python loop over the tensors. Both give the
    loop's update to rounding (tests/test_optimizer.py)."""
    if parameters and all(p.device.type == "cuda" for p in parameters):
        return {"fused": True}
    return {"foreach": True}


def set_bn_eval(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


@dataclass
class StepResult:
    """What one optimisation step did. `skipped`: why the update was refused (a bad step);
    `scaler_skipped`: the GradScaler found non-finite float16 gradients and lowered its scale."""

    metrics: dict[str, float]
    facial_preds: list[torch.Tensor]
    head_preds: list[torch.Tensor]
    skipped: str | None = None
    scaler_skipped: bool = False


def train_step(
    model: nn.Module,
    batch: tuple,
    *,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    iters: int,
    gamma: float,
    clip: float,
    device: torch.device,
    distributed: bool,
    noise_generator: torch.Generator | None = None,
    amp_dtype: torch.dtype | None = None,
) -> StepResult:
    """One optimisation step (forward autocast to `amp_dtype` (None: float32), loss, scaled
    backward, clipping, update)."""
    image1, image2, flow_f, flow_h, valid_f, valid_h, _ = [x.to(device, non_blocking=True) for x in batch]
    if noise_generator is not None:
        std = 5.0 * torch.rand((), generator=noise_generator).item()
        image1 = (image1 + std * torch.randn(image1.shape, generator=noise_generator).to(device)).clamp(0, 255)
        image2 = (image2 + std * torch.randn(image2.shape, generator=noise_generator).to(device)).clamp(0, 255)
    optimizer.zero_grad(set_to_none=True)
    facial_preds, head_preds = model(image1, image2, iters=iters, amp_dtype=amp_dtype)
    loss, metrics = sequence_loss(facial_preds, head_preds, flow_f, flow_h, valid_f, valid_h, gamma)
    if any_across_ranks(not math.isfinite(metrics["loss"]), device, distributed):
        return StepResult(metrics, facial_preds, head_preds, skipped="non-finite loss")
    no_ground_truth = math.isnan(metrics["facial_epe"]) and math.isnan(metrics["head_epe"])
    if any_across_ranks(no_ground_truth, device, distributed):
        return StepResult(metrics, facial_preds, head_preds, skipped="no valid ground-truth pixel")
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    metrics["grad_norm"] = float(grad_norm)
    if not scaler.is_enabled() and not math.isfinite(metrics["grad_norm"]):
        # grads are identical on all ranks
        return StepResult(metrics, facial_preds, head_preds, skipped="non-finite gradient")
    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
    scaler.step(optimizer)  # with float16 the scaler itself skips steps with inf/NaN gradients
    scaler.update()  # ... and then lowers its scale
    return StepResult(
        metrics, facial_preds, head_preds, scaler_skipped=scaler.is_enabled() and scaler.get_scale() < scale
    )
