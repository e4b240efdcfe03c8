"""DecFlow architecture: state dict, trainable sets, lookup order, upsampling, inputs, outputs."""

from __future__ import annotations

import pytest
import torch

from core import corr as corr_module
from core.corr import CorrBlock, coords_grid
from core.encoders import InstanceNorm2d
from core.network import DecFlow, DecFlowConfig, DecFlowOutput, convex_upsample
from core.reference import straightforward_lookup, straightforward_pyramid
from core.training.stages import set_trainable
from tests.model_helpers import authors_state_dict, bf16_tolerance, read_spec


@pytest.fixture(scope="module")
def model() -> DecFlow:
    net = DecFlow()
    net.load_state_dict(authors_state_dict(prefix=""))
    return net.eval()


def images(height: int = 128, width: int = 160, batch: int = 1, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    image1 = torch.rand(batch, 3, height, width, generator=generator) * 255
    # image 2: image 1 shifted by 3 px to the right, so the flow is not trivial
    image2 = torch.roll(image1, shifts=3, dims=-1)
    return image1, image2


def test_state_dict_matches_spec_keys_shapes_and_dtypes():
    state = DecFlow().state_dict()
    spec = read_spec()
    assert list(state) == [key for key, _, _ in spec]
    for key, shape, dtype in spec:
        assert tuple(state[key].shape) == shape, key
        assert str(state[key].dtype) == f"torch.{dtype}", key


@pytest.mark.parametrize("frozen, expected", [(False, 9_640_066), (True, 3_760_193)])
def test_trainable_parameter_counts(frozen, expected):
    net = DecFlow()
    if frozen:
        set_trainable(net, 2)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == expected


def test_set_trainable_switches_between_stages():
    net = DecFlow()
    set_trainable(net, 2)
    trainable = {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"update_block_head", "change_dim"}
    set_trainable(net, 1)
    trainable = {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"fnet", "cnet", "att", "update_block", "update_block_head", "change_dim"}
    with pytest.raises(ValueError, match="stage must be one of"):
        set_trainable(net, 3)


def test_correlation_lookup_channel_order():
    # One hot feature in image 2 at (x=7, y=5); every pixel of image 1 matches it.
    fmap1 = torch.ones(1, 1, 16, 16)
    fmap2 = torch.zeros(1, 1, 16, 16)
    fmap2[0, 0, 5, 7] = 1.0
    corr = CorrBlock(fmap1, fmap2, num_levels=4, radius=4)
    assert corr.out_channels == 324
    coords = coords_grid(1, 16, 16)  # identity: pixel (x, y) looks around (x, y)
    out = corr(coords)
    assert out.shape == (1, 324, 16, 16) and out.dtype == torch.float32
    # Query pixel (x=5, y=4): the hot pixel is at offset dx=+2, dy=+1, i.e. a=6, b=5.
    level0 = out[0, :81, 4, 5]
    assert level0.argmax().item() == 6 * 9 + 5
    assert level0[6 * 9 + 5].item() == pytest.approx(1.0)
    assert level0.sum().item() == pytest.approx(1.0)


def test_correlation_lookup_of_several_fields_equals_separate_lookups():
    generator = torch.Generator().manual_seed(1)
    fmap1, fmap2 = torch.randn(2, 2, 8, 16, 20, generator=generator)
    corr = CorrBlock(fmap1, fmap2)
    coords_a = coords_grid(2, 16, 20) + 3 * torch.randn(2, 2, 16, 20, generator=generator)
    coords_b = coords_grid(2, 16, 20) - 2 * torch.rand(2, 2, 16, 20, generator=generator)
    joint = corr([coords_a, coords_b])
    assert torch.allclose(joint[0], corr(coords_a), atol=1e-6)
    assert torch.allclose(joint[1], corr(coords_b), atol=1e-6)


@pytest.mark.parametrize("dense_from_level", [0, 4])
def test_correlation_lookup_equals_bilinear_sampling_of_the_pyramid(dense_from_level):
    # The gathered-and-interpolated windows against the reference's grid_sample lookup,
    # with centres inside, on integer pixels, on the border and far outside.
    generator = torch.Generator().manual_seed(6)
    fmap1, fmap2 = torch.randn(2, 2, 16, 16, 24, generator=generator)
    base = coords_grid(2, 16, 24)
    coords = [
        base + 5 * torch.randn(2, 2, 16, 24, generator=generator),
        base.round() + 1.0,
        torch.full_like(base, 23.0),
        base + 40.0 * torch.randn(2, 2, 16, 24, generator=generator),
    ]
    pyramid = straightforward_pyramid(fmap1, fmap2)
    lookups = CorrBlock(fmap1, fmap2, dense_from_level=dense_from_level)(coords)
    for field, got in zip(coords, lookups):
        expected = straightforward_lookup(pyramid, field)
        assert got.shape == expected.shape == (2, 324, 16, 24)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("whole_rows_up_to", [0, 8192], ids=["gather-windows", "whole-rows"])
@pytest.mark.parametrize("dense_from_level", [1, 2, 4])
def test_correlation_computed_on_the_fly_equals_the_pyramid(dense_from_level, whole_rows_up_to, monkeypatch):
    monkeypatch.setattr(corr_module, "SMALL_LEVEL_PIXELS", whole_rows_up_to)
    generator = torch.Generator().manual_seed(4)
    fmap1, fmap2 = torch.randn(2, 2, 32, 17, 23, generator=generator)
    coords = [
        coords_grid(2, 17, 23) + 6 * torch.randn(2, 2, 17, 23, generator=generator),
        coords_grid(2, 17, 23).round() - 2.0,
    ]  # integer centres, some windows outside
    dense = CorrBlock(fmap1, fmap2)(coords)
    mixed = CorrBlock(fmap1, fmap2, dense_from_level=dense_from_level, chunk_elements=40_000)(coords)
    for a, b in zip(dense, mixed):
        assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("grad", [False, True])
def test_instance_norm_keeps_channels_last_and_matches_pytorch(grad):
    generator = torch.Generator().manual_seed(7)
    x = (3 * torch.randn(2, 16, 12, 20, generator=generator) + 5).contiguous(memory_format=torch.channels_last)
    with torch.set_grad_enabled(grad):
        out = InstanceNorm2d(16)(x)
    expected = torch.nn.functional.instance_norm(x.contiguous())
    assert torch.allclose(out, expected, atol=1e-5)
    if not grad:  # inference: stays channels-last for the convolutions that follow
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_instance_norm_is_accurate_when_a_channels_mean_is_large_against_its_spread():
    """Trained encoders' activations: mean 30, std 0.5. A one-pass variance (group norm's CPU
    kernel on the raw input) is 2e-2 off the float64 norm there; centred first, 2e-6."""
    generator = torch.Generator().manual_seed(3)
    x = (0.5 * torch.randn(1, 32, 40, 40, generator=generator) + 30).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = InstanceNorm2d(32)(x)
    expected = torch.nn.functional.instance_norm(x.double().contiguous()).float()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_convex_upsampling_of_constant_flow():
    generator = torch.Generator().manual_seed(2)
    flow = torch.empty(1, 2, 6, 7)
    flow[:, 0], flow[:, 1] = 1.25, -0.5
    mask = torch.randn(1, 576, 6, 7, generator=generator)
    up = convex_upsample(flow, mask)
    assert up.shape == (1, 2, 48, 56)
    # Away from the zero-padded border every output is a convex combination of equal values.
    interior = up[:, :, 8:-8, 8:-8]
    assert torch.allclose(interior[:, 0], torch.full_like(interior[:, 0], 8 * 1.25), atol=1e-5)
    assert torch.allclose(interior[:, 1], torch.full_like(interior[:, 1], 8 * -0.5), atol=1e-5)
    # All weight on the centre neighbour (k = 4): the whole image, border included.
    centred = torch.full((1, 9, 64, 6, 7), -1e4)
    centred[:, 4] = 0
    up = convex_upsample(flow, centred.reshape(1, 576, 6, 7))
    assert torch.allclose(up[:, 0], torch.full_like(up[:, 0], 10.0))
    assert torch.allclose(up[:, 1], torch.full_like(up[:, 1], -4.0))


def test_convex_upsampling_neighbour_and_subpixel_order():
    # Neighbour k = 3*(dy+1) + (dx+1); sub-pixel (i, j) of coarse pixel (y, x) lands at (8y+i, 8x+j).
    flow = torch.zeros(1, 2, 3, 3)
    flow[0, 0, 1, 2] = 1.0  # right neighbour of the centre pixel (dy=0, dx=+1 -> k=5)
    logits = torch.full((1, 9, 8, 8, 3, 3), -1e4)
    logits[0, 5, 2, 3, 1, 1] = 0  # sub-pixel (i=2, j=3) of centre pixel takes its right neighbour
    logits[0, 4] = torch.where(logits[0, 5] == 0, -1e4, 0.0)
    up = convex_upsample(flow, logits.reshape(1, 576, 3, 3))
    assert up[0, 0, 8 + 2, 8 + 3].item() == pytest.approx(8.0)
    assert up[0, 0, 8 + 2, 8 + 4].item() == pytest.approx(0.0)


@pytest.mark.parametrize(
    "shape1, shape2, fragment",
    [
        ((1, 3, 130, 160), (1, 3, 130, 160), "multiples of 8"),
        ((1, 3, 120, 160), (1, 3, 120, 160), "at least 128"),
        ((1, 3, 128, 160), (1, 3, 128, 168), "differ in shape"),
        ((1, 1, 128, 160), (1, 1, 128, 160), "[B, 3, H, W]"),
        ((3, 128, 160), (3, 128, 160), "[B, 3, H, W]"),
    ],
)
def test_invalid_inputs_raise_with_shape(model, shape1, shape2, fragment):
    with pytest.raises(ValueError) as error:
        model(torch.zeros(shape1), torch.zeros(shape2), iters=1)
    assert fragment in str(error.value)
    assert str(tuple(shape1)) in str(error.value) or str(tuple(shape2)) in str(error.value)


def test_flow_init_shape_is_checked(model):
    image1, image2 = images()
    with pytest.raises(ValueError, match="flow_init"):
        model(image1, image2, iters=1, flow_init=torch.zeros(1, 2, 8, 8))


@torch.no_grad()
def test_test_mode_fields_are_consistent(model):
    image1, image2 = images(batch=2)
    out = model(image1, image2, iters=3, test_mode=True)
    assert isinstance(out, DecFlowOutput)
    for name in ("facial", "head", "expression"):
        assert getattr(out, name).shape == (2, 2, 128, 160)
        assert torch.isfinite(getattr(out, name)).all()
    assert out.facial_low.shape == out.head_low.shape == (2, 2, 16, 20)
    assert torch.equal(out.expression, out.facial - out.head)
    facial_preds, head_preds = model(image1, image2, iters=3)
    assert len(facial_preds) == len(head_preds) == 3
    assert torch.allclose(out.facial, facial_preds[-1], atol=1e-5)
    assert torch.allclose(out.head, head_preds[-1], atol=1e-5)
    # The low-resolution result is the final flow (the reference returned the initial one).
    assert out.facial_low.abs().max() > 0
    coarse = torch.nn.functional.avg_pool2d(out.facial, 8) / 8
    assert (coarse - out.facial_low).abs().mean() < (coarse.abs().mean() + 1e-3)
    # ... and it warm-starts the next call.
    warm = model(image1, image2, iters=1, flow_init=out.facial_low, test_mode=True)
    assert torch.isfinite(warm.facial).all()


def _grad_names(net: DecFlow) -> set[str]:
    image1, image2 = images(seed=3)
    net.train()
    facial, head = net(image1, image2, iters=2)
    (sum(p.abs().mean() for p in facial) + sum(p.abs().mean() for p in head)).backward()
    return {name for name, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("frozen", [False, True])
def test_gradients_reach_exactly_the_trainable_parameters(frozen):
    torch.manual_seed(0)
    # Relative-position tables only take part with position attention switched on.
    net = DecFlow(DecFlowConfig(position_and_content=True))
    set_trainable(net, 2 if frozen else 1)
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    assert _grad_names(net) == trainable
    frozen_names = {name for name, p in net.named_parameters() if not p.requires_grad}
    assert any(n.startswith("dad_encoder.") for n in frozen_names)
    assert any(n.startswith("res1.") for n in frozen_names)


@torch.no_grad()
def test_mixed_precision_runs_in_bfloat16_on_cpu(model):
    image1, image2 = images()
    reference = model(image1, image2, iters=2, test_mode=True)
    mixed = model(image1, image2, iters=2, test_mode=True, amp_dtype=torch.bfloat16)
    assert mixed.facial.dtype == torch.float32
    assert torch.isfinite(mixed.facial).all() and torch.isfinite(mixed.head).all()
    # Measured: mean deviation 0.0176 px of a mean |flow| of 4.08 px, 0.43% (AMD EPYC, AVX2, bf16 emulated).
    tolerance = bf16_tolerance(0.0043) * reference.facial.abs().mean().item()  # 0.053 px here
    assert (mixed.facial - reference.facial).abs().mean().item() <= tolerance
    assert not torch.equal(mixed.facial, reference.facial)  # bf16 really ran


@torch.no_grad()
def test_flow_init_per_decoder(model):
    image1, image2 = images()
    facial_init = torch.full((1, 2, 16, 20), 1.0)
    head_init = torch.full((1, 2, 16, 20), -2.0)
    both = model(image1, image2, iters=2, flow_init=(facial_init, head_init), test_mode=True)
    facial_only = model(image1, image2, iters=2, flow_init=facial_init, test_mode=True)
    head_only = model(image1, image2, iters=2, flow_init=head_init, test_mode=True)
    assert torch.equal(both.facial, facial_only.facial)
    assert torch.equal(both.head, head_only.head)
    assert not torch.equal(both.head, facial_only.head)


@pytest.mark.parametrize("case", ["nan_image", "inf_image2", "float64", "nan_flow_init"])
def test_non_finite_or_double_inputs_are_value_errors(case):
    model = DecFlow().eval()
    image1 = torch.full((1, 3, 128, 128), 100.0)
    image2 = image1.clone()
    flow_init = None
    if case == "nan_image":
        image1[0, 0, 5, 5] = float("nan")
    elif case == "inf_image2":
        image2[0, 1, 0, 0] = float("inf")
    elif case == "float64":
        image1, image2 = image1.double(), image2.double()
    else:
        flow_init = torch.zeros(1, 2, 16, 16)
        flow_init[0, 0, 3, 3] = float("nan")
    expected = {
        "nan_image": "image1 holds 1 non-finite",
        "inf_image2": "image2 holds 1 non-finite",
        "float64": "image1 must be float32",
        "nan_flow_init": "flow_init holds 1 non-finite",
    }[case]
    with torch.no_grad(), pytest.raises(ValueError, match=expected):
        model(image1, image2, iters=1, flow_init=flow_init, test_mode=True)
