"""Procedural face textures (skin, eyes, brows, nose, mouth, hair) and backgrounds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

#: Texture atlas pixels per canonical pixel.
ATLAS_SCALE = 2
#: Half the atlas side, in face half-heights (room for the hair around the face).
ATLAS_HALF_SIZE = 1.35
#: Width of the anti-aliasing ramp of the drawn shapes, in canonical pixels.
EDGE = 1.2

Array = np.ndarray


def _noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> Array:
    """Smooth value noise in about [-1, 1] with feature size ``cell`` pixels."""
    gh, gw = int(np.ceil(shape[0] / cell)) + 3, int(np.ceil(shape[1] / cell)) + 3
    grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    big = cv2.resize(grid, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)
    return big[: shape[0], : shape[1]]


def _smooth_step(z: Array, width: float) -> Array:
    """Anti-aliased indicator of ``z > 0`` with a ramp of ``width`` (same units as ``z``)."""
    return np.clip(0.5 + z / width, 0.0, 1.0)


def _ellipse(x: Array, y: Array, cx: float, cy: float, rx: float, ry: float, edge: float, angle: float = 0.0) -> Array:
    """Soft coverage of an ellipse (``edge`` = ramp width in the same units)."""
    c, s = np.cos(angle), np.sin(angle)
    u = (x - cx) * c + (y - cy) * s
    v = -(x - cx) * s + (y - cy) * c
    rho = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    return _smooth_step((1.0 - rho) * min(rx, ry), edge)


def _paint(img: Array, coverage: Array, colour: Sequence[float]) -> None:
    """Alpha-blend ``colour`` into ``img`` in place."""
    img += coverage[..., None] * (np.asarray(colour, dtype=np.float32) - img)


SKIN_TONES = (
    (0.98, 0.86, 0.76),
    (0.95, 0.79, 0.67),
    (0.87, 0.66, 0.52),
    (0.76, 0.55, 0.41),
    (0.55, 0.38, 0.27),
    (0.38, 0.26, 0.18),
)
HAIR_COLOURS = (
    (0.08, 0.06, 0.05),
    (0.25, 0.15, 0.08),
    (0.45, 0.30, 0.15),
    (0.80, 0.65, 0.40),
    (0.55, 0.22, 0.10),
    (0.65, 0.65, 0.65),
)
IRIS_COLOURS = ((0.35, 0.22, 0.12), (0.25, 0.40, 0.60), (0.30, 0.45, 0.30), (0.45, 0.45, 0.50))


@dataclass(frozen=True)
class FaceTexture:
    """A face texture atlas in canonical coordinates.

    ``rgb`` (float32 0..1), ``head`` (face or hair coverage) and ``face`` (face
    without hair) are sampled at atlas pixel ``(x * scale + offset, y * scale + offset)``
    for canonical point ``(x, y)``.
    """

    rgb: Array
    head: Array
    face: Array
    offset: float
    scale: int

    def sample(self, x: Array, y: Array) -> tuple[Array, Array, Array]:
        """Bilinearly sample colour, head coverage and face coverage at canonical points."""
        mx = (x * self.scale + self.offset).astype(np.float32)
        my = (y * self.scale + self.offset).astype(np.float32)
        opts = dict(interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        rgb = cv2.remap(self.rgb, mx, my, borderMode=cv2.BORDER_REPLICATE, interpolation=cv2.INTER_LINEAR)
        return rgb, cv2.remap(self.head, mx, my, **opts), cv2.remap(self.face, mx, my, **opts)


@dataclass(frozen=True)
class FaceLayout:
    """Canonical positions of the facial features (pixels, face centre at the origin)."""

    a: float  # face half-width
    b: float  # face half-height
    eye_x: float
    eye_y: float
    eye_w: float
    eye_h: float
    brow_y: float
    mouth_y: float
    mouth_w: float

    @staticmethod
    def random(rng: np.random.Generator, a: float) -> FaceLayout:
        b = a * rng.uniform(1.2, 1.4)
        eye_w = a * rng.uniform(0.2, 0.26)
        eye_y = -b * rng.uniform(0.05, 0.15)
        return FaceLayout(
            a=a,
            b=b,
            eye_x=a * rng.uniform(0.36, 0.44),
            eye_y=eye_y,
            eye_w=eye_w,
            eye_h=eye_w * rng.uniform(0.42, 0.55),
            brow_y=eye_y - b * rng.uniform(0.17, 0.24),
            mouth_y=b * rng.uniform(0.52, 0.62),
            mouth_w=a * rng.uniform(0.3, 0.4),
        )


def make_face_texture(rng: np.random.Generator, layout: FaceLayout) -> FaceTexture:
    """Draw a procedural face (skin, hair, eyes, brows, nose, mouth) into an atlas."""
    half = ATLAS_HALF_SIZE * layout.b
    size = int(np.ceil(2 * half * ATLAS_SCALE))
    offset = size / 2.0
    coords = (np.arange(size, dtype=np.float32) - offset) / ATLAS_SCALE
    x, y = np.meshgrid(coords, coords)  # canonical coordinates of the atlas pixels, [size, size] each
    rgb, tone, rho = _paint_skin(rng, x, y, layout)
    hair_colour = _paint_eyes_and_brows(rgb, rng, x, y, layout, tone)
    _paint_nose(rgb, x, y, layout, tone)
    _paint_mouth(rgb, rng, x, y, layout, tone)
    face, hair = _paint_hair(rgb, rng, x, y, layout, rho, hair_colour)
    rgb = cv2.GaussianBlur(np.clip(rgb, 0.0, 1.0), (0, 0), sigmaX=0.9 * ATLAS_SCALE)  # pre-filter against aliasing
    return FaceTexture(
        rgb=rgb.astype(np.float32),
        head=np.maximum(face, hair).astype(np.float32),
        face=(face * (1.0 - hair)).astype(np.float32),
        offset=offset,
        scale=ATLAS_SCALE,
    )


def _paint_skin(rng: np.random.Generator, x: Array, y: Array, layout: FaceLayout) -> tuple[Array, Array, Array]:
    """The skin: tone, low-frequency blotches, fine grain, shading toward the rim, blush, moles.
    Returns the atlas `[size, size, 3]`, the skin tone and `rho`, the face's elliptic radius (1 at its rim)."""
    a, b, s, size = layout.a, layout.b, ATLAS_SCALE, x.shape[0]
    tone = np.array(SKIN_TONES[rng.integers(len(SKIN_TONES))]) * rng.uniform(0.92, 1.05, 3)
    rgb = np.ones((size, size, 3), np.float32) * tone.astype(np.float32)
    variation = 0.08 * _noise(rng, (size, size), 12 * s) + 0.05 * _noise(rng, (size, size), 3 * s)
    variation += 0.015 * _noise(rng, (size, size), 1.5 * s)
    rgb *= 1.0 + variation[..., None]
    chin = rng.uniform(0.1, 0.3)
    width = a * (1.0 - chin * np.clip(y / b, 0.0, None) ** 2)
    rho = np.sqrt((x / width) ** 2 + (y / b) ** 2)
    rgb *= (1.0 - 0.3 * np.clip(rho, 0, 1) ** 4)[..., None]
    for side in (-1, 1):
        blush = np.exp(-(((x - side * 0.5 * a) / (0.25 * a)) ** 2 + ((y - 0.2 * b) / (0.18 * b)) ** 2))
        _paint(rgb, 0.25 * blush.astype(np.float32), (0.85, 0.35, 0.35))
    for _ in range(rng.integers(0, 6)):  # moles and freckles
        mx, my = rng.uniform(-0.7, 0.7) * a, rng.uniform(-0.5, 0.8) * b
        _paint(rgb, _ellipse(x, y, mx, my, 1.2, 1.2, EDGE), tone * 0.55)
    return rgb, tone, rho


def _paint_eyes_and_brows(
    rgb: Array, rng: np.random.Generator, x: Array, y: Array, layout: FaceLayout, tone: Array
) -> Array:
    """Eyes (socket shadow, sclera, iris, pupil, highlight, lid line) and brows; returns the hair
    colour (the brows', drawn here, so that the random draws keep their order)."""
    hair_colour = np.array(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))])
    iris_colour = IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]
    gaze = rng.uniform(-0.3, 0.3, 2)
    brow_tilt = rng.uniform(-0.25, 0.2)
    edge = EDGE
    for side in (-1, 1):
        ex, ey, ew, eh = side * layout.eye_x, layout.eye_y, layout.eye_w, layout.eye_h
        _paint(rgb, _ellipse(x, y, ex, ey, ew * 1.15, eh * 1.25, edge), tone * 0.7)  # socket shadow
        sclera = _ellipse(x, y, ex, ey, ew, eh, edge)
        _paint(rgb, sclera, (0.93, 0.92, 0.88))
        ix, iy = ex + gaze[0] * ew * 0.4, ey + gaze[1] * eh * 0.3
        _paint(rgb, sclera * _ellipse(x, y, ix, iy, eh * 0.85, eh * 0.85, edge), iris_colour)
        _paint(rgb, sclera * _ellipse(x, y, ix, iy, eh * 0.38, eh * 0.38, edge), (0.03, 0.03, 0.03))
        _paint(rgb, sclera * _ellipse(x, y, ix + eh * 0.3, iy - eh * 0.3, eh * 0.15, eh * 0.15, edge * 0.7), (1, 1, 1))
        lid = _ellipse(x, y, ex, ey - eh * 0.15, ew * 1.05, eh * 1.05, edge) * (1 - sclera) * (y < ey)
        _paint(rgb, 0.8 * lid, (0.1, 0.07, 0.06))
        brow = _ellipse(x, y, ex, layout.brow_y, ew * 1.3, eh * rng.uniform(0.3, 0.5), edge, angle=side * brow_tilt)
        _paint(rgb, 0.9 * brow, hair_colour * 0.8)
    return hair_colour


def _paint_nose(rgb: Array, x: Array, y: Array, layout: FaceLayout, tone: Array) -> None:
    """Bridge shading, tip highlight, nostrils."""
    a, b = layout.a, layout.b
    nose_y = 0.5 * (layout.eye_y + layout.mouth_y) + 0.05 * b
    bridge = np.exp(-(((x - 0.12 * a) / (0.05 * a)) ** 2)) * (y > layout.eye_y) * (y < nose_y)
    _paint(rgb, 0.25 * bridge.astype(np.float32), tone * 0.6)
    _paint(rgb, 0.5 * _ellipse(x, y, 0, nose_y - 0.04 * b, 0.14 * a, 0.07 * b, 3 * EDGE), tone * 1.1)
    for side in (-1, 1):
        _paint(rgb, _ellipse(x, y, side * 0.09 * a, nose_y + 0.02 * b, 0.06 * a, 0.03 * b, EDGE), tone * 0.3)


def _paint_mouth(rgb: Array, rng: np.random.Generator, x: Array, y: Array, layout: FaceLayout, tone: Array) -> None:
    """Lips with a dark gap (the gap widens when the expression opens the mouth)."""
    b = layout.b
    lip_colour = np.clip(tone * np.array([0.95, 0.55, 0.55]) * rng.uniform(0.8, 1.0), 0, 1)
    my, mw = layout.mouth_y, layout.mouth_w
    _paint(rgb, _ellipse(x, y, 0, my - 0.035 * b, mw, 0.05 * b, EDGE), lip_colour)
    _paint(rgb, _ellipse(x, y, 0, my + 0.045 * b, mw * 0.9, 0.065 * b, EDGE), lip_colour * 1.08)
    _paint(rgb, _ellipse(x, y, 0, my, mw * 0.95, 0.015 * b, EDGE), (0.2, 0.05, 0.05))


def _paint_hair(
    rgb: Array, rng: np.random.Generator, x: Array, y: Array, layout: FaceLayout, rho: Array, hair_colour: Array
) -> tuple[Array, Array]:
    """Hair: a cap above a hairline, optionally long on the sides, behind the face (some subjects
    are bald). Returns the coverages of the face (hair or not) and of the hair."""
    a, b, s, size = layout.a, layout.b, ATLAS_SCALE, x.shape[0]
    face = _smooth_step((1.0 - rho) * a, EDGE)
    cap = _ellipse(x, y, 0, -0.12 * b, a * rng.uniform(1.08, 1.18), b * rng.uniform(1.04, 1.12), EDGE)
    hairline = -b * (rng.uniform(0.48, 0.62) - 0.25 * (x / a) ** 2)
    above = _smooth_step(hairline - y, EDGE)
    if rng.uniform() < 0.5:  # long hair beside the face
        length = b * rng.uniform(0.2, 0.9)
        above = np.maximum(above, (1.0 - face) * _smooth_step(length - y, EDGE))
    hair = cap * above if rng.uniform() > 0.08 else np.zeros_like(cap)  # some subjects are bald
    strands = cv2.GaussianBlur(
        rng.uniform(-1, 1, (size, size)).astype(np.float32), (0, 0), sigmaX=0.6 * s, sigmaY=4 * s
    )
    hair_rgb = hair_colour.astype(np.float32) * (
        1.0 + 0.6 * strands[..., None] + 0.15 * _noise(rng, (size, size), 8 * s)[..., None]
    )
    rgb += hair[..., None] * (hair_rgb - rgb)
    return face, hair


def make_background(
    rng: np.random.Generator, shape: tuple[int, int], face_centre: tuple[float, float], face_a: float
) -> Array:
    """Procedural background (gradient wall, blurred shapes, grain, shoulders), float32 RGB 0..1."""
    h, w = shape
    top, bottom = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    ramp = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    bg = (top * (1 - ramp) + bottom * ramp).astype(np.float32) * np.ones((h, w, 1), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(rng.integers(3, 8)):
        colour = rng.uniform(0.05, 0.95, 3)
        if rng.uniform() < 0.5:
            x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
            box = (xx > x0) & (xx < x0 + rng.uniform(0.1, 0.4) * w) & (yy > y0) & (yy < y0 + rng.uniform(0.1, 0.4) * h)
            cover = box.astype(np.float32)
        else:
            r = rng.uniform(0.05, 0.2) * min(h, w)
            cover = _ellipse(xx, yy, rng.uniform(0, w), rng.uniform(0, h), r, r, 1.5)
        _paint(bg, 0.8 * cover, colour)
    bg = cv2.GaussianBlur(bg, (0, 0), sigmaX=1.5)
    bg *= 1.0 + 0.06 * _noise(rng, (h, w), 6.0)[..., None] + 0.03 * _noise(rng, (h, w), 2.0)[..., None]
    cx, cy = face_centre
    shirt = _ellipse(xx, yy, cx, cy + 3.2 * face_a, 2.6 * face_a, 1.6 * face_a, 1.5)
    _paint(bg, shirt, rng.uniform(0.05, 0.9, 3))
    neck = ((np.abs(xx - cx) < 0.45 * face_a) & (yy > cy)).astype(np.float32)
    _paint(bg, np.clip(neck - shirt, 0, 1), np.array(SKIN_TONES[rng.integers(len(SKIN_TONES))]) * 0.75)
    return np.clip(bg, 0.0, 1.0).astype(np.float32)
