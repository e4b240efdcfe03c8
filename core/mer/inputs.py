"""The classifier's input: one onset->apex flow turned into three normalised channels (the recipe).

STSTNet, OFF-ApexNet and HTNet publish their 28x28 inputs, never the code that made them; this is
ours, step by step (docs/mer.md, "Recipe"):

1. The flow `[H, W, 2]` (u, v in pixels of the face crop) must be finite; anything else is refused.
2. Optical strain magnitude at the flow's own resolution, by `core.strain` (`numpy.gradient`:
   central differences inside, one-sided at the border, 1 px spacing):
   sqrt(u_x^2 + v_y^2 + 0.5 (u_y + v_x)^2).
3. u, v and strain resized to `size` x `size` with `cv2.INTER_AREA` (pixel-area averaging) when
   neither side grows, else `cv2.INTER_LINEAR`. u is multiplied by size / W and v by size / H, so
   the flow stays in the output's pixels (a non-square crop keeps each vector's direction there).
4. Per clip, nothing of any other clip: u and v divided by one factor, the largest vector length
   sqrt(u^2 + v^2) over the resized map (so u, v lie in [-1, 1] and keep direction and ratio);
   strain divided by its own largest value (so it lies in [0, 1]). A channel whose largest value
   is 0 (a zero flow; the strain of a constant flow) stays all zeros: nothing is divided by 0.
5. Channel order (u, v, strain): `[3, size, size]` float32.
"""

from __future__ import annotations

import cv2
import numpy as np

from core.errors import UserError
from core.strain import strain_magnitude, strain_tensor

INPUT_SIZE = 28  # STSTNet's input side
CHANNELS = ("u", "v", "strain")  # the order of the input's channels


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """`[size, size, ...]` of a `[H, W, ...]` image, each axis by its own factor: area averaging
    unless a side grows, then bilinear."""
    height, width = image.shape[:2]
    interpolation = cv2.INTER_AREA if size <= min(height, width) else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def _scaled(values: np.ndarray, largest: float) -> np.ndarray:
    """`values / largest`, or zeros where `largest` is 0 (no division by zero)."""
    if largest > 0:
        return values / np.float32(largest)
    return np.zeros_like(values)


def classifier_input(flow: np.ndarray, *, size: int = INPUT_SIZE) -> np.ndarray:
    """`[3, size, size]` float32 (u, v, strain magnitude) of one onset->apex flow `[H, W, 2]`
    in face-crop pixels, per the recipe of this module's docstring."""
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2 or min(flow.shape[:2]) < 2:
        raise UserError(f"a classifier input needs a flow of shape [H, W, 2] with H, W >= 2, got {list(flow.shape)}")
    if size < 1:
        raise UserError(f"the classifier's input size must be at least 1, got {size}")
    if not np.isfinite(flow).all():
        raise UserError(f"the flow has {int((~np.isfinite(flow)).sum())} non-finite values (NaN or inf)")
    height, width = flow.shape[:2]
    strain = strain_magnitude(strain_tensor(flow[::1, ::1]))
    resized = resize_square(flow.astype(np.float32), size)  # [size, size, 2]
    u = resized[..., 0] * np.float32(size / width)  # [size, size], output pixels
    v = resized[..., 1] * np.float32(size / height)
    strain = resize_square(strain.astype(np.float32), size)
    length = float(np.sqrt(u.astype(np.float64) ** 2 + v.astype(np.float64) ** 2).max())
    channels = (_scaled(u, length), _scaled(v, length), _scaled(strain, float(strain.max())))
    return np.stack(channels).astype(np.float32)  # [3, size, size]
