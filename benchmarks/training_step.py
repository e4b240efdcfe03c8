"""One timed training step (forward, sequence loss, backward, clip, AdamW) for the CPU and CUDA
benchmarks: random ground truth for a pair, and a step per mode."""

from __future__ import annotations

from collections.abc import Callable

import torch

from core.loss import sequence_loss
from core.network import DecFlow

Targets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # facial flow, head flow, valid mask


def random_targets(image1: torch.Tensor) -> Targets:
    """Seeded ground truth for a batch of images `[B, 3, H, W]`: flows of a few px, all valid."""
    generator = torch.Generator().manual_seed(2)
    shape = (image1.shape[0], 2, *image1.shape[-2:])
    flow_facial = (3 * torch.randn(shape, generator=generator)).to(image1.device)
    flow_head = (2 * torch.randn(shape, generator=generator)).to(image1.device)
    return flow_facial, flow_head, torch.ones(shape[0], *shape[2:], device=image1.device)


def make_step(
    model: DecFlow,
    optimizer: torch.optim.Optimizer,
    forward: Callable,
    dtype: torch.dtype | None,
    image1: torch.Tensor,
    image2: torch.Tensor,
    targets: Targets,
    *,
    iters: int,
) -> Callable[[], None]:
    """A training step of `model` through `forward(image1, image2, iters=, amp_dtype=)` with
    autocast to `dtype` (None: float32), with its own GradScaler (on for float16 only)."""
    scaler = torch.amp.GradScaler(image1.device.type, enabled=dtype == torch.float16)
    flow_facial, flow_head, valid = targets

    def step() -> None:
        facial, head = forward(image1, image2, iters=iters, amp_dtype=dtype)
        loss, _ = sequence_loss(facial, head, flow_facial, flow_head, valid, valid, gamma=0.85)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()

    return step


def step_runs(
    model: DecFlow,
    image1: torch.Tensor,
    image2: torch.Tensor,
    *,
    iters: int,
    modes: dict[str, tuple[Callable, torch.dtype | None]],
    lr: float,
) -> dict[str, Callable[[], None]]:
    """`{name: step}` for `modes` `{name: (forward, autocast dtype or None)}`, each with its own
    GradScaler (on for float16 only), all updating `model` with one AdamW."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    targets = random_targets(image1)
    return {
        name: make_step(model, optimizer, forward, dtype, image1, image2, targets, iters=iters)
        for name, (forward, dtype) in modes.items()
    }
