"""Middlebury colour-wheel visualisation of optical flow.

Hue encodes the flow direction and saturation its magnitude relative to a
normalisation radius (the largest magnitude by default, or a fixed ``max_flow`` so
that several flows share one scale). Magnitudes beyond the radius are drawn
darkened, as in the Middlebury code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from core.utils.atomic import atomic_path

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


# ---------------------------------------------------------------- get_flow's panels
PANEL_TITLES = ("input", "facial", "head", "expression")
TITLE_FONT = 0.5
LEGEND_TEXT_HEIGHT = 44  # below the wheel: margin, two lines of text


def _put_text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float) -> None:
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def _title_width(titles: tuple[str, ...]) -> int:
    """Width of a panel column that fits every title."""
    return max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, TITLE_FONT, 1)[0][0] for t in titles) + 12


def _legend(height: int, scale: float) -> np.ndarray:
    """Colour wheel + scale, white, at least `height` px high (taller for small images)."""
    legend_width = int(np.clip(height * 0.6, 96, 200))
    wheel = colour_wheel_legend(min(legend_width - 16, max(height - 48, 32)))
    legend_height = max(height, wheel.shape[0] + LEGEND_TEXT_HEIGHT)
    legend = np.full((legend_height, legend_width, 3), 255, np.uint8)
    top = 4
    left = (legend_width - wheel.shape[1]) // 2
    legend[top : top + wheel.shape[0], left : left + wheel.shape[1]] = wheel
    font = 0.4 if legend_width < 140 else 0.5
    text_y = min(top + wheel.shape[0] + 16, legend_height - 20)
    _put_text(legend, "rim = max flow", (6, text_y), font * 0.9)
    _put_text(legend, f"{scale:.3g} px", (6, min(text_y + 18, legend_height - 4)), font)
    return legend


def render_flow_panels(
    image: np.ndarray,
    facial: np.ndarray,
    head: np.ndarray,
    expression: np.ndarray,
    *,
    max_flow: float | None = None,
    titles: tuple[str, ...] = PANEL_TITLES,
) -> tuple[np.ndarray, float]:
    """Side-by-side RGB image `image | facial | head | expression | legend` under a title strip.

    `image`: uint8 `[H, W, 3]` RGB; flows: `[H, W, 2]` (x first). All three flows use one
    colour scale: `max_flow` px (default: their largest magnitude) is full saturation.
    Panels sit at the top left of their cells; images too small for the titles or the
    legend get a white margin (right, bottom). Returns the canvas (uint8 RGB, even height
    and width so it can go into an MP4) and the scale used.
    """
    height, width = image.shape[:2]
    scale = shared_max_flow(facial, head, expression) if max_flow is None else float(max_flow)
    panels = [image] + [flow_to_image(flow, max_flow=scale) for flow in (facial, head, expression)]
    legend = _legend(height, scale)
    column = max(width, _title_width(titles))
    header = 22
    body_height = legend.shape[0]
    canvas = np.full((header + body_height, len(panels) * column + legend.shape[1], 3), 255, np.uint8)
    for i, panel in enumerate(panels):
        left = i * column
        canvas[header : header + height, left : left + width] = panel
        if column > width:  # a grey edge where a small panel ends, so the margin does not look like flow
            canvas[header : header + height + 1, left + width] = 192
        if body_height > height:
            canvas[header + height, left : left + width + 1] = 192
    canvas[header:, len(panels) * column :] = legend
    for i, title in enumerate(titles):
        _put_text(canvas, title, (i * column + 6, 16), TITLE_FONT)
    _put_text(canvas, "legend", (len(panels) * column + 6, 16), TITLE_FONT)
    pad_h, pad_w = canvas.shape[0] % 2, canvas.shape[1] % 2
    if pad_h or pad_w:
        canvas = np.pad(canvas, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=255)
    return canvas, scale


def write_png(path: Path, rgb: np.ndarray, *, text: Mapping[str, str] | None = None) -> None:
    """Write an RGB uint8 image as PNG, with `text` entries (tEXt chunks); OSError naming the
    file when it cannot be written."""
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    try:
        with atomic_path(path) as tmp:
            Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="PNG", pnginfo=info, compress_level=1)
    except (OSError, ValueError) as error:
        raise OSError(f"cannot write {path} ({error})") from None


def read_png_text(path: Path, key: str) -> str | None:
    """Text entry `key` of a PNG (None: no such file, entry or readable PNG)."""
    try:
        with Image.open(path) as image:
            return image.text.get(key) if image.format == "PNG" else None
    except (OSError, ValueError, SyntaxError):
        return None
