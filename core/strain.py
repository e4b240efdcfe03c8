"""Optical strain of a flow, and the per-pair means micro-expression pipelines (STSTNet, HTNet) use.

For a flow (u, v) the strain tensor is
    e_xx = u_x,  e_yy = v_y,  e_xy = (u_y + v_x) / 2
with the derivatives as `numpy.gradient` takes them (central differences inside, one-sided at
the border, 1 px spacing), and its magnitude
    sqrt(u_x^2 + v_y^2 + 0.5 (u_y + v_x)^2) = sqrt(e_xx^2 + e_yy^2 + 2 e_xy^2).
Strain has no unit (px per px), so it is the same in crop and frame coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


def strain_tensor(flow: np.ndarray) -> np.ndarray:
    """`[H, W, 3]` float32 (e_xx, e_yy, e_xy) of a `[H, W, 2]` flow."""
    u, v = flow[..., 0].astype(np.float64), flow[..., 1].astype(np.float64)
    u_y, u_x = np.gradient(u)  # derivatives along rows (y), then columns (x)
    v_y, v_x = np.gradient(v)
    return np.stack([u_x, v_y, 0.5 * (u_y + v_x)], axis=-1).astype(np.float32)


def strain_magnitude(tensor: np.ndarray) -> np.ndarray:
    """`[H, W]` float32 sqrt(e_xx^2 + e_yy^2 + 2 e_xy^2) of a `strain_tensor`."""
    e_xx, e_yy, e_xy = (tensor[..., k].astype(np.float64) for k in range(3))
    return np.sqrt(e_xx**2 + e_yy**2 + 2 * e_xy**2).astype(np.float32)


def box_mean(values: np.ndarray, box: Sequence[float]) -> float:
    """Mean of `values` ([H, W] or [H, W, C] reduced by the caller) over the pixels whose centres lie
    in the (x, y, w, h) box, clipped to the array."""
    height, width = values.shape[:2]
    x, y, w, h = box
    cols = slice(max(int(np.ceil(x - 0.5)), 0), min(int(np.ceil(x + w - 0.5)), width))
    rows = slice(max(int(np.ceil(y - 0.5)), 0), min(int(np.ceil(y + h - 0.5)), height))
    inside = values[rows, cols]
    if inside.size == 0:
        raise ValueError(f"box {list(box)} holds no pixel of a {width}x{height} flow")
    return float(inside.mean())


# The pixels a strain table's flows and box are in: the face crop's (--face_crop), or the frame's
TABLE_PIXELS = ("crop", "frame")
# The columns of tables written before they named their pixels (a rerun still knows them as tables)
LEGACY_HEADER = ["name", "facial", "head", "expression", "strain", "box_x", "box_y", "box_w", "box_h"]


class PairMeasures(NamedTuple):
    """One row of a sequence's strain table: means inside the face box, in the flow's pixels."""

    name: str
    facial: float  # mean |facial flow|, px
    head: float
    expression: float
    strain: float  # mean strain magnitude of the expression flow (no unit)
    box: tuple[float, float, float, float]  # (x, y, w, h) the means cover, in the flow's pixels

    @staticmethod
    def header(pixels: str) -> list[str]:
        """The table's columns, naming the pixels (one of `TABLE_PIXELS`) of the flows and the box."""
        means = [f"{kind}_mean_{pixels}_px" for kind in ("facial", "head", "expression")]
        return ["name", *means, "strain_mean", *(f"box_{axis}_{pixels}_px" for axis in "xywh")]

    @staticmethod
    def is_header(columns: Sequence[str]) -> bool:
        """Whether `columns` are a strain table's, of this version or an earlier one."""
        return list(columns) in [*(PairMeasures.header(p) for p in TABLE_PIXELS), LEGACY_HEADER]

    def row(self) -> list[str]:
        numbers = (self.facial, self.head, self.expression, self.strain)
        return [self.name, *(f"{v:.6g}" for v in numbers), *(f"{v:.1f}" for v in self.box)]


def measure_pair(name: str, flows: Sequence[np.ndarray], magnitude: np.ndarray, box: Sequence[float]) -> PairMeasures:
    """The means of the facial, head and expression flow magnitudes and of the strain `magnitude` in `box`."""
    means = [box_mean(np.linalg.norm(flow, axis=-1), box) for flow in flows]
    return PairMeasures(name, *means, box_mean(magnitude, box), tuple(float(v) for v in box))
