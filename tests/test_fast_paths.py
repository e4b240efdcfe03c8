"""The fast inference path, mixed precision and the memory-bounded mode agree with the
straightforward per-spec forward (core/reference.py). No timing here: see benchmarks/."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from benchmarks import benchmark
from benchmarks.op_count import count_step
from core import corr, precision
from core.network import DecFlow, DecFlowConfig
from core.reference import straightforward_forward
from tests.model_helpers import assert_flows_close, authors_state_dict, bf16_tolerance

STATE = authors_state_dict(prefix="")


def _model(**options) -> DecFlow:
    model = DecFlow(DecFlowConfig(**options))
    model.load_state_dict(STATE)
    return model.eval()


def _pair(height=136, width=176, batch=1):
    generator = torch.Generator().manual_seed(5)
    image1 = torch.rand(batch, 3, height, width, generator=generator) * 255
    image2 = torch.roll(image1, shifts=(2, -3), dims=(-2, -1))
    return image1, image2


@pytest.mark.parametrize("options", [{}, {"position_and_content": True}, {"position_only": True}])
@torch.no_grad()
def test_fast_path_matches_straightforward_forward(options):
    model = _model(**options)
    image1, image2 = _pair(batch=2)
    flow_init = torch.full((2, 2, 17, 22), 0.7)
    expected = straightforward_forward(model, image1, image2, iters=4, flow_init=flow_init, test_mode=True)
    got = model(image1, image2, iters=4, flow_init=flow_init, test_mode=True)
    assert_flows_close(got, expected, ("facial", "head", "expression", "facial_low", "head_low"), atol=1e-3)
    # training mode: every prediction of both decoders
    facial, head = model(image1, image2, iters=3)
    facial_ref, head_ref = straightforward_forward(model, image1, image2, iters=3)
    torch.testing.assert_close([*facial, *head], [*facial_ref, *head_ref], rtol=0, atol=1e-3)


def test_fast_path_gradients_match_straightforward_forward():
    model = _model()
    model.train()
    image1, image2 = _pair()
    grads = []
    for forward in (model.forward, lambda *a, **k: straightforward_forward(model, *a, **k)):
        model.zero_grad()
        facial, head = forward(image1, image2, iters=2)
        (facial[-1].abs().mean() + head[-1].abs().mean() + 0.5 * facial[0].abs().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        # Rounding alone (e.g. another memory layout in the straightforward forward) moves the
        # flow-encoder gradients by ~0.3 %; biases before instance norm get only noise.
        difference = (grads[0][name] - grads[1][name]).norm().item()
        assert difference <= 1e-2 * grads[1][name].norm().item() + 1e-6, name


def test_training_step_launches_do_not_grow_with_the_batch():
    """Kernel-launching ATen calls of a training step (forward and backward): the fast path's do
    not depend on the batch size (no per-sample loop), and each iteration of its recurrence
    launches fewer than the straightforward forward's. Measured with `benchmarks.op_count` at
    batch 6, 12 iterations: 5,122 per step against 5,668 (7,666 with the former per-sample lookup)."""
    model = _model().train()
    image1, image2 = _pair(128, 128, batch=2)
    straightforward = partial(straightforward_forward, model)
    fast = {iters: count_step(model, image1, image2, iters=iters, train=True).kernels for iters in (2, 3)}
    plain = {
        iters: count_step(model, image1, image2, iters=iters, train=True, forward=straightforward).kernels
        for iters in (2, 3)
    }
    larger_batch = count_step(model, *_pair(128, 128, batch=3), iters=2, train=True).kernels
    assert larger_batch == fast[2]  # (at batch 1 a few layout copies are no-ops, hence 2 and 3)
    assert fast[3] - fast[2] < plain[3] - plain[2], (fast, plain)


@pytest.mark.parametrize("options", [{}, {"position_and_content": True}])
@torch.no_grad()
def test_alternate_corr_matches_default_mode(options):
    image1, image2 = _pair(height=144, width=160)
    default = _model(**options)(image1, image2, iters=3, test_mode=True)
    bounded = _model(**options)(image1, image2, iters=3, test_mode=True, alternate_corr=True)
    assert_flows_close(bounded, default, ("facial", "head", "facial_low", "head_low"), atol=1e-3)


@torch.no_grad()
def test_large_frames_compute_the_finest_correlation_level_on_the_fly(monkeypatch):
    image1, image2 = _pair(height=136, width=160)
    model = _model()
    dense = model(image1, image2, iters=3, test_mode=True)
    monkeypatch.setattr(corr, "MAX_DENSE_CORRELATION", 0)  # as if the frames were large
    assert corr.corr_levels_stored_from(1, 17 * 20, torch.device("cpu")) == 1
    on_the_fly = model(image1, image2, iters=3, test_mode=True)
    assert_flows_close(on_the_fly, dense, ("facial", "head"), atol=1e-3)


@torch.no_grad()
def test_mixed_precision_stays_close_to_fp32_straightforward_forward():
    model = _model()
    image1, image2 = _pair()
    expected = straightforward_forward(model, image1, image2, iters=4, test_mode=True)
    got = model(image1, image2, iters=4, test_mode=True, amp_dtype=torch.bfloat16)
    deviation = (got.facial - expected.facial).abs()
    magnitude = expected.facial.abs().mean().item()
    assert torch.isfinite(got.facial).all()
    # Measured: mean deviation 0.042 px of a mean |flow| of 8.35 px, 0.50% (AMD EPYC, AVX2, bf16 emulated).
    tolerance = bf16_tolerance(0.0050) * magnitude  # 0.125 px here
    assert 0 < deviation.mean().item() <= tolerance, (deviation.mean().item(), magnitude)  # > 0: bf16 really ran


@pytest.mark.parametrize("native_bf16", [True, False])
def test_benchmark_script_prints_every_table(capsys, monkeypatch, native_bf16):
    """The benchmark script at 128x128, one iteration, one run per mode (about 10 s: it also measures the
    convolution peak); its tables and their columns, not its times. Mixed-precision rows only where the
    CPU has native bfloat16 (mocked both ways)."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda *a, **k: native_bf16)
    args = benchmark.get_args_parser().parse_args(
        ["inference", "--size", "128", "128", "--iters", "1", "--warmup", "0", "--repeats", "1"]
    )
    benchmark.main(args)
    out = capsys.readouterr().out
    assert "convolution peak on this CPU" in out
    for column in ("pairs_per_s", "speedup", "gflop_per_s", "max_diff_px"):
        assert column in out
    rows = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.split() and line.split()[0] in ("straightforward", "fast", "fast-bf16", "alternate")
    }
    expected = {"straightforward", "fast", "alternate"} | ({"fast-bf16"} if native_bf16 else set())
    assert set(rows) == expected
    assert out.count("no native bfloat16") == (0 if native_bf16 else 1)
    assert float(rows["fast"][-2]) <= 1e-3  # max deviation of the exact fast path, px
    assert float(rows["straightforward"][2]) == 1.0  # the straightforward forward's own speedup
