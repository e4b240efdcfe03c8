"""core.strain against analytic flows whose strain is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from core.strain import box_mean, measure_pair, strain_magnitude, strain_tensor


def _grid(height: int = 24, width: int = 32) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return x, y


def test_affine_flow_has_its_constant_strain_everywhere() -> None:
    """u = a x + b y, v = c x + d y: u_x = a, v_y = d, u_y = b, v_x = c at every pixel (the
    one-sided border differences are exact for a linear flow too)."""
    a, b, c, d = 0.03, -0.02, 0.05, -0.01
    x, y = _grid()
    flow = np.stack([a * x + b * y + 1.5, c * x + d * y - 2.0], axis=-1).astype(np.float32)
    tensor = strain_tensor(flow)
    assert tensor.shape == (24, 32, 3) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[..., 0], a, atol=1e-6)
    np.testing.assert_allclose(tensor[..., 1], d, atol=1e-6)
    np.testing.assert_allclose(tensor[..., 2], (b + c) / 2, atol=1e-6)
    magnitude = strain_magnitude(tensor)
    assert magnitude.dtype == np.float32
    np.testing.assert_allclose(magnitude, np.sqrt(a**2 + d**2 + 0.5 * (b + c) ** 2), rtol=1e-5)


def test_quadratic_flow_strain_inside_and_a_rotation_has_none() -> None:
    """u = k x^2, v = k y^2 x: central differences are exact for quadratics inside the frame:
    u_x = 2 k x, v_y = 2 k y x, u_y = 0, v_x = k y^2."""
    k = 0.001
    x, y = _grid()
    flow = np.stack([k * x**2, k * y**2 * x], axis=-1).astype(np.float32)
    expected = np.sqrt((2 * k * x) ** 2 + (2 * k * y * x) ** 2 + 0.5 * (k * y**2) ** 2)
    magnitude = strain_magnitude(strain_tensor(flow))
    np.testing.assert_allclose(magnitude[1:-1, 1:-1], expected[1:-1, 1:-1], rtol=1e-4, atol=1e-7)
    # a small rotation (u = -w y, v = w x) has u_y + v_x = 0 and no stretch: no strain
    w = 0.01
    rotation = np.stack([-w * y, w * x], axis=-1).astype(np.float32)
    np.testing.assert_allclose(strain_magnitude(strain_tensor(rotation)), 0.0, atol=1e-7)


def test_means_inside_a_box() -> None:
    values = np.arange(24 * 32, dtype=np.float32).reshape(24, 32)
    # pixel centres x + 0.5 in [4, 10): columns 4..9; y in [2, 5): rows 2..4
    assert box_mean(values, (4.0, 2.0, 6.0, 3.0)) == pytest.approx(values[2:5, 4:10].mean())
    assert box_mean(values, (-5.0, -5.0, 100.0, 100.0)) == pytest.approx(values.mean())  # clipped to the array
    with pytest.raises(ValueError, match="holds no pixel"):
        box_mean(values, (40.0, 0.0, 5.0, 5.0))
    facial = np.zeros((24, 32, 2), np.float32)
    facial[..., 0] = 3.0
    facial[..., 1] = 4.0  # |facial| = 5
    head = np.zeros_like(facial)
    expression = facial - head
    row = measure_pair("p", (facial, head, expression), values, (4.0, 2.0, 6.0, 3.0))
    assert row[:4] == ("p", 5.0, 0.0, 5.0) and row.strain == pytest.approx(values[2:5, 4:10].mean())
    assert row.row()[:5] == ["p", "5", "0", "5", f"{values[2:5, 4:10].mean():.6g}"]
