"""Middlebury colour-wheel visualisation of optical flow.

Hue encodes the flow direction and saturation its magnitude relative to a
normalisation radius (the largest magnitude by default, or a fixed ``max_flow`` so
that several flows share one scale). Magnitudes beyond the radius are drawn
darkened, as in the Middlebury code.
"""

from __future__ import annotations

import numpy as np

# Number of hue steps between the six primary/secondary colours of the wheel
# (red-yellow, yellow-green, green-cyan, cyan-blue, blue-magenta, magenta-red).
_SEGMENTS = (15, 6, 4, 11, 13, 6)


def make_colour_wheel() -> np.ndarray:
    """Return the ``[55, 3]`` float colour wheel (RGB in 0..1) of the Middlebury code."""
    ramps = []
    # (start colour, channel that changes, direction) for each segment
    starts = [(1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 1, 1), (0, 0, 1), (1, 0, 1)]
    changing = [1, 0, 2, 1, 0, 2]
    rising = [True, False, True, False, True, False]
    for n, start, channel, up in zip(_SEGMENTS, starts, changing, rising):
        seg = np.tile(np.array(start, dtype=np.float64), (n, 1))
        ramp = np.arange(n) / n
        seg[:, channel] = ramp if up else 1.0 - ramp
        ramps.append(seg)
    return np.concatenate(ramps, axis=0)


def _flow_to_colour(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Colour normalised flow components (magnitude 1 = full saturation)."""
    wheel = make_colour_wheel()
    ncols = wheel.shape[0]
    rad = np.sqrt(u**2 + v**2)
    angle = np.arctan2(-v, -u) / np.pi  # in [-1, 1]
    pos = (angle + 1.0) / 2.0 * (ncols - 1)
    k0 = np.floor(pos).astype(np.int64)
    k1 = (k0 + 1) % ncols
    frac = (pos - k0)[..., None]
    colour = (1.0 - frac) * wheel[k0] + frac * wheel[k1]
    inside = (rad <= 1.0)[..., None]
    colour = np.where(inside, 1.0 - rad[..., None] * (1.0 - colour), colour * 0.75)
    return np.floor(255.0 * colour).astype(np.uint8)


def shared_max_flow(*flows: np.ndarray) -> float:
    """The largest finite flow magnitude among `[H, W, 2]` flows (1.0 if all are zero): one
    `max_flow` so that several flows are drawn on the same scale."""
    largest = 0.0
    for flow in flows:
        magnitude = np.sqrt(np.square(flow.astype(np.float64)).sum(axis=-1))
        magnitude = magnitude[np.isfinite(magnitude)]
        if magnitude.size:
            largest = max(largest, float(magnitude.max()))
    return largest if largest > 0 else 1.0


def flow_to_image(flow: np.ndarray, max_flow: float | None = None) -> np.ndarray:
    """Convert a ``[H, W, 2]`` flow to a ``uint8`` ``[H, W, 3]`` RGB image.

    Args:
        flow: flow in pixels, channel 0 = x. Non-finite values are drawn as zero flow.
        max_flow: magnitude mapped to full saturation. ``None`` uses the largest
            finite magnitude of this flow (zero flow gives a white image).
    """
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must have shape [H, W, 2], got {flow.shape}")
    if max_flow is not None and not (np.isfinite(max_flow) and max_flow > 0):
        raise ValueError(f"max_flow must be a positive finite number, got {max_flow}")
    flow = np.where(np.isfinite(flow), flow, 0.0)
    if max_flow is None:
        max_flow = float(np.sqrt((flow**2).sum(axis=2)).max(initial=0.0))
    scale = 1.0 / max(max_flow, np.finfo(np.float64).eps)
    return _flow_to_colour(flow[..., 0] * scale, flow[..., 1] * scale)


def colour_wheel_legend(size: int = 128) -> np.ndarray:
    """Return a ``uint8`` ``[size, size, 3]`` RGB image of the colour wheel for legends.

    The centre is zero flow; the circle's rim is the normalisation magnitude; the
    corners outside the circle are white.
    """
    if size < 2:
        raise ValueError(f"legend size must be at least 2, got {size}")
    coords = np.linspace(-1.0, 1.0, size)
    u, v = np.meshgrid(coords, coords)
    image = _flow_to_colour(u, v)
    image[u**2 + v**2 > 1.0] = 255
    return image
