"""InputPadder: padding amounts of both modes, the 128 px minimum, and exact unpadding."""

from __future__ import annotations

import pytest
import torch

from core.onnx_runtime import SizeRule
from core.utils.padder import InputPadder, check_inputs, image_size_problem


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("symmetric", (1, 2, 3, 3)),  # 250x333 -> 256x336: width 1+2, height 3+3
        ("exp", (1, 2, 0, 6)),  # the reference evaluation: height padded at the bottom only
    ],
)
def test_padding_amounts_and_round_trip(mode, expected):
    padder = InputPadder((1, 3, 250, 333), mode=mode)
    assert padder.padding == expected and padder.padded_shape == (256, 336)
    image = torch.rand(1, 3, 250, 333)
    padded = padder.pad(image)[0]
    assert padded.shape == (1, 3, 256, 336)
    assert torch.equal(padder.unpad(padded), image)
    # replicate padding: the border rows/columns repeat the image's edge
    left, _, top, _ = padder.padding
    assert torch.equal(padded[..., top, left : left + 333], image[..., 0, :])


def test_multiples_of_eight_are_left_alone():
    assert InputPadder((2, 3, 128, 160)).padding == (0, 0, 0, 0)


def test_min_side_pads_small_images_up():
    padder = InputPadder((100, 90), min_side=128)
    assert padder.padded_shape == (128, 128)
    flow = torch.rand(2, 100, 90)
    assert torch.equal(padder.unpad(padder.pad(flow[None])[0]), flow[None])


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="pad mode"):
        InputPadder((128, 128), mode="sintel")


@pytest.mark.parametrize("size, padding", [((20, 30), (49, 49, 54, 54)), ((1, 1), (63, 64, 63, 64))])
def test_tiny_images_pad_up_to_the_minimum_and_back(size, padding):
    """get_flow.py pads images of a few pixels to DecFlow's 128 px by replicating the border."""
    padder = InputPadder((1, 3, *size), mode="symmetric", min_side=128)
    assert padder.padding == padding and padder.padded_shape == (128, 128)
    image = torch.rand(1, 3, *size)
    padded = padder.pad(image)[0]
    assert torch.equal(padder.unpad(padded), image)
    assert torch.equal(padded[..., 0, 0], image[..., 0, 0]) and torch.equal(padded[..., -1, -1], image[..., -1, -1])


def test_one_size_rule_for_the_network_and_an_export():
    """The network (check_inputs, train.py's --image_size) and an ONNX export (SizeRule) state
    one rule: the same answer for the same sides; the export only adds its upper bound."""
    assert image_size_problem(128, 136) is None and image_size_problem(1024, 128) is None
    assert image_size_problem(130, 128) == "image sides must be multiples of 8"
    assert image_size_problem(120, 128) == "image sides must be at least 128 px for the 4-level correlation pyramid"
    export = SizeRule(max_side=1280)
    for sides in [(128, 136), (130, 128), (128, 132), (120, 128), (64, 64), (1280, 128), (128, 1288), (2048, 2048)]:
        expected = "image sides must be at most 1280 px" if max(sides) > 1280 and sides[0] % 8 == 0 else None
        assert export.problem(*sides) == (image_size_problem(*sides) or expected), sides
    with pytest.raises(ValueError, match="multiples of 8 .*InputPadder"):
        check_inputs(torch.zeros(1, 3, 128, 132), torch.zeros(1, 3, 128, 132))
