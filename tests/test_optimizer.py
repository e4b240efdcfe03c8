"""The training optimiser's multi-tensor kernels (foreach, fused) against AdamW's plain loop:
the same parameters after a few scheduled steps, on DecFlow's own parameter list."""

from __future__ import annotations

import copy

import pytest
import torch

from core.network import DecFlow
from core.training.step import adamw_kernels, build_optimizer

STEPS = 4
HYPER = dict(lr=1e-2, wdecay=1e-5, epsilon=1e-8, num_steps=100)  # large lr: every tensor moves by > 1e-4
LOOP = {"foreach": False, "fused": False}  # AdamW's Python loop over the tensors


@pytest.fixture(scope="module")
def decflow() -> DecFlow:
    torch.manual_seed(0)
    return DecFlow()


def _trained(model: DecFlow, device: torch.device, kernels: dict[str, bool] | None = None) -> list[torch.Tensor]:
    """Trainable parameters after STEPS scheduled updates from seeded gradients, with
    build_optimizer's kernels for `device` or, given `kernels`, those."""
    model = copy.deepcopy(model).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = build_optimizer(params, **HYPER)
    for group in optimizer.param_groups:
        group.update(kernels or {})
    generator = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator).to(device)
        optimizer.step()
        scheduler.step()
    return [p.detach().cpu() for p in params]


def _assert_same(got: list[torch.Tensor], expected: list[torch.Tensor], model: DecFlow) -> None:
    start = [p.detach() for p in model.parameters() if p.requires_grad]
    assert min((e - s).abs().max().item() for e, s in zip(expected, start)) > 1e-4  # every tensor moved
    worst = max((g - e).abs().max().item() for g, e in zip(got, expected))
    assert worst <= 1e-6, worst


def test_training_uses_foreach_kernels_on_cpu(decflow):
    params = [p for p in decflow.parameters() if p.requires_grad]
    assert len(params) > 150  # many small tensors: the case the multi-tensor kernels are for
    assert adamw_kernels(params) == {"foreach": True}
    optimizer, _ = build_optimizer(params, **HYPER)
    assert optimizer.param_groups[0]["foreach"] and not optimizer.param_groups[0]["fused"]


@pytest.mark.parametrize("kernels", [None, {"foreach": False, "fused": True}], ids=["foreach", "fused"])
def test_multi_tensor_adamw_matches_the_loop_on_cpu(decflow, kernels):
    # foreach: what training uses on CPU; fused: the CPU build of the kernel CUDA training uses
    cpu = torch.device("cpu")
    _assert_same(_trained(decflow, cpu, kernels), _trained(decflow, cpu, LOOP), decflow)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_cuda_adamw_matches_the_cpu_loop(decflow):
    cuda = torch.device("cuda")
    assert adamw_kernels([p.to(cuda) for p in decflow.parameters()]) == {"fused": True}
    _assert_same(_trained(decflow, cuda), _trained(decflow, torch.device("cpu"), LOOP), decflow)
