"""The classifier's input recipe (core.mer.inputs) on flows whose channels are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import UserError
from core.mer.inputs import INPUT_SIZE, classifier_input


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return x, y


def test_linear_flow_on_a_non_square_crop_gives_known_channels() -> None:
    """u = a x, v = b y on an 84x56 (H x W) crop: strain sqrt(a^2 + b^2) everywhere; area averaging over
    3x2 blocks gives u = a (2i + 0.5), v = b (3j + 1), times 28/56 and 28/84 into output pixels:
    a (i + 0.25) and b (j + 1/3); the largest vector is at (27, 27)."""
    a, b = 0.05, -0.03
    x, y = _grid(84, 56)
    flow = np.stack([a * x, b * y], axis=-1).astype(np.float32)
    result = classifier_input(flow)
    assert result.shape == (3, INPUT_SIZE, INPUT_SIZE) and result.dtype == np.float32
    i = np.arange(28, dtype=np.float64)
    u = np.broadcast_to(a * (i + 0.25), (28, 28))
    v = np.broadcast_to((b * (i + 1 / 3))[:, None], (28, 28))
    largest = np.hypot(a * 27.25, b * (27 + 1 / 3))
    np.testing.assert_allclose(result[0], u / largest, atol=1e-5)
    np.testing.assert_allclose(result[1], v / largest, atol=1e-5)
    np.testing.assert_allclose(result[2], 1.0, atol=1e-5)  # constant strain, scaled by itself
    # a few pixels written out: u at column 3, v at row 5, the corner vector has length 1
    assert result[0, 9, 3] == pytest.approx(0.05 * 3.25 / largest, abs=1e-6)
    assert result[1, 5, 20] == pytest.approx(-0.03 * (5 + 1 / 3) / largest, abs=1e-6)
    assert np.hypot(result[0, 27, 27], result[1, 27, 27]) == pytest.approx(1.0, abs=1e-6)


def test_strain_is_taken_before_resizing() -> None:
    """u = k x^2, v = 0 on 56x56: numpy.gradient gives strain |u_x| = 2 k x inside, k at column 0 and
    109 k at column 55 (one-sided); 2x2 area means: 1.5 k, k (4 i + 1), 108.5 k at the last column."""
    k = 0.002
    x, _ = _grid(56, 56)
    flow = np.stack([k * x**2, np.zeros_like(x)], axis=-1).astype(np.float32)
    strain = classifier_input(flow)[2]
    column = np.array([1.5] + [4 * i + 1 for i in range(1, 27)] + [108.5]) / 108.5
    np.testing.assert_allclose(strain, np.broadcast_to(column, (28, 28)), rtol=1e-4, atol=1e-6)
    assert strain[13, 10] == pytest.approx(41 / 108.5, rel=1e-4)


def test_constant_flow_keeps_its_direction_and_has_no_strain() -> None:
    flow = np.broadcast_to(np.array([3.0, -4.0], np.float32), (40, 40, 2))
    result = classifier_input(flow)
    np.testing.assert_allclose(result[0], 0.6, atol=1e-6)
    np.testing.assert_allclose(result[1], -0.8, atol=1e-6)
    np.testing.assert_array_equal(result[2], 0.0)


def test_zero_flow_gives_zeros_not_nan() -> None:
    result = classifier_input(np.zeros((64, 48, 2), np.float32), size=16)
    assert result.shape == (3, 16, 16)
    np.testing.assert_array_equal(result, 0.0)


def test_each_clip_is_normalised_by_itself_alone() -> None:
    """Scaling a clip's flow changes nothing (one factor for u and v, its own for strain); the u/v
    ratio survives, unlike with a factor per channel."""
    rng = np.random.default_rng(3)
    flow = rng.normal(0, 1, (60, 60, 2)).astype(np.float32)
    flow[..., 1] *= 0.25
    result = classifier_input(flow)
    np.testing.assert_allclose(classifier_input(flow * 7.5), result, atol=1e-5)
    assert np.abs(result[:2]).max() <= 1.0 + 1e-6 and result[2].min() >= 0 and result[2].max() == pytest.approx(1)
    assert np.abs(result[1]).max() < 0.5 * np.abs(result[0]).max()


def test_other_sizes_shrink_and_grow() -> None:
    x, y = _grid(20, 20)
    flow = np.stack([0.1 * x, 0.1 * y], axis=-1).astype(np.float32)
    grown = classifier_input(flow, size=48)
    assert grown.shape == (3, 48, 48) and np.isfinite(grown).all()
    np.testing.assert_allclose(grown[2], 1.0, atol=1e-5)
    assert classifier_input(flow, size=5).shape == (3, 5, 5)


@pytest.mark.parametrize(
    ("flow", "words"),
    [
        (np.zeros((30, 30, 3), np.float32), "shape [H, W, 2]"),
        (np.zeros((1, 30, 2), np.float32), "H, W >= 2"),
        (np.full((30, 30, 2), np.nan, np.float32), "1800 non-finite"),
    ],
)
def test_bad_flows_are_refused_in_one_line(flow: np.ndarray, words: str) -> None:
    with pytest.raises(UserError) as error:
        classifier_input(flow)
    assert words in str(error.value) and "\n" not in str(error.value)
