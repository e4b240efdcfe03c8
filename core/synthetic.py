"""Synthetic FacialFlowNet-format data with exact ground-truth flow.

Every subject is a procedural face texture (skin, eyes, brows, nose, mouth, hair)
defined in a *canonical* coordinate frame (pixels, origin at the face centre) over a
procedural background with shoulders. A frame ``t`` is rendered by inverse mapping:
an output pixel ``p`` maps to the deformed canonical point ``c' = H_t^-1(p)`` (``H_t``
is the head homography: rotation, scale, translation and mild perspective) and then
to the texture point ``c = G_t(c') = c' + F_t(c')``, where ``F_t`` is a smooth,
compactly supported expression field (mouth opening, smile/frown, brow raise, eye
closing). ``F_t`` is kept contractive (Lipschitz < 1), so ``G_t`` is invertible by
fixed-point iteration.

Ground truth (``p`` a pixel of frame ``i``):

* head layer (face and hair): facial flow ``H_{i+1}(G_{i+1}^-1(c)) - p`` (the same
  texture point in frame ``i+1``), head flow ``H_{i+1}(c') - p`` (head motion with
  the expression held);
* background: the background translation between the two frames, for both flows
  (zero for static backgrounds), so the expression flow (facial - head) is zero
  outside the head;
* ``image/head`` renders the sequence with the expression of frame 1 held
  (``G_0``) and the same background, so the head flow also maps ``image/head`` frame
  ``i`` onto frame ``i+1`` exactly;
* ``mask/.../0001.npy`` is the face (skin, features, not hair) of frame 1, as a
  boolean ``[H, W]`` array; one mask is written per frame (``n`` masks), the last
  one belongs to no pair.

Backward-warping frame ``i+1`` with the ground truth reproduces frame ``i`` on the
visible head pixels up to JPEG and interpolation error (see :func:`warp_error`).
"""

from __future__ import annotations

import argparse
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from core.datasets import LABEL_FOLDERS
from core.utils import frame_utils

EMOTIONS = ("angry", "happy", "neutral", "sad", "surprise")
SPLITS = ("train", "val", "test")
JPEG_QUALITY = 95
#: Texture atlas pixels per canonical pixel.
ATLAS_SCALE = 2
#: Upper bound of the Lipschitz constant of the expression field.
MAX_EXPRESSION_LIPSCHITZ = 0.7

Array = np.ndarray


# --------------------------------------------------------------------------- geometry


def apply_homography(h: Array, x: Array, y: Array) -> tuple[Array, Array]:
    """Map points ``(x, y)`` with the 3x3 homography ``h``."""
    w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    return (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w, (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w


@dataclass(frozen=True)
class Oscillation:
    """``amplitude * sin(omega * t + phase) - offset``, smooth in the frame index ``t``.

    With ``centred=True`` the value at ``t = 0`` is subtracted (motion starts at rest position).
    """

    amplitude: float
    omega: float
    phase: float
    centred: bool = True

    def __call__(self, t: float) -> float:
        offset = self.amplitude * np.sin(self.phase) if self.centred else 0.0
        return float(self.amplitude * np.sin(self.omega * t + self.phase) - offset)

    @staticmethod
    def random(rng: np.random.Generator, max_amplitude: float, centred: bool = True) -> "Oscillation":
        return Oscillation(
            amplitude=float(rng.uniform(0.0, max_amplitude)),
            omega=float(rng.uniform(0.2, 0.5)),
            phase=float(rng.uniform(0.0, 2 * np.pi)),
            centred=centred,
        )


@dataclass(frozen=True)
class HeadMotion:
    """Rigid head motion: ``H_t`` maps canonical face coordinates to image pixels."""

    centre: tuple[float, float]
    angle0: float
    angle: Oscillation
    tx: Oscillation
    ty: Oscillation
    log_scale: Oscillation
    persp_x: Oscillation
    persp_y: Oscillation

    def homography(self, t: float) -> Array:
        """Homography of frame ``t``: translate . rotate-scale . perspective."""
        theta = self.angle0 + self.angle(t)
        s = np.exp(self.log_scale(t))
        rot = np.array(
            [[s * np.cos(theta), -s * np.sin(theta), 0.0], [s * np.sin(theta), s * np.cos(theta), 0.0], [0, 0, 1.0]]
        )
        persp = np.array([[1.0, 0, 0], [0, 1.0, 0], [self.persp_x(t), self.persp_y(t), 1.0]])
        trans = np.array([[1.0, 0, self.centre[0] + self.tx(t)], [0, 1.0, self.centre[1] + self.ty(t)], [0, 0, 1.0]])
        return trans @ rot @ persp


def _wendland(r: Array) -> Array:
    """C2 compactly supported bump ``(1-r)^4 (4r+1)`` on ``r < 1``, 1 at the centre."""
    q = np.clip(1.0 - r, 0.0, None)
    return q**4 * (4.0 * r + 1.0)


@dataclass(frozen=True)
class ExpressionField:
    """Backward expression field ``F_t(c') = sum_k a_k(t) v_k phi(|(c' - mu_k) / R_k|)``.

    ``G_t(c') = c' + F_t(c')`` maps a deformed canonical point to its texture point;
    the forward motion of the skin is about ``-F``. Activations ``a_k(t)`` lie in [0, 1].
    """

    centres: Array  # [K, 2]
    radii: Array  # [K, 2]
    vectors: Array  # [K, 2] backward displacement at full activation
    activations: tuple[Callable[[float], float], ...]

    def field(self, x: Array, y: Array, t: float) -> tuple[Array, Array]:
        """``F_t`` at canonical points ``(x, y)``."""
        fx = np.zeros_like(x)
        fy = np.zeros_like(y)
        for (mx, my), (rx, ry), (vx, vy), act in zip(self.centres, self.radii, self.vectors, self.activations):
            a = act(t)
            if a == 0.0:
                continue
            phi = _wendland(np.sqrt(((x - mx) / rx) ** 2 + ((y - my) / ry) ** 2))
            fx += a * vx * phi
            fy += a * vy * phi
        return fx, fy

    def backward(self, x: Array, y: Array, t: float) -> tuple[Array, Array]:
        """``G_t``: deformed canonical point -> texture point."""
        fx, fy = self.field(x, y, t)
        return x + fx, y + fy

    def forward(self, x: Array, y: Array, t: float, tol: float = 1e-8, max_iter: int = 200) -> tuple[Array, Array]:
        """``G_t^-1``: texture point -> deformed canonical point, by fixed-point iteration.

        Only points within reach of a bump are iterated; the field is contractive,
        so the iteration converges geometrically.
        """
        reach = float(np.abs(self.vectors).max(initial=0.0))
        lo = (self.centres - self.radii).min(axis=0) - reach
        hi = (self.centres + self.radii).max(axis=0) + reach
        sel = (x > lo[0]) & (x < hi[0]) & (y > lo[1]) & (y < hi[1])
        ox, oy = x.astype(np.float64, copy=True), y.astype(np.float64, copy=True)
        tx, ty = ox[sel], oy[sel]
        cx, cy = tx.copy(), ty.copy()
        for _ in range(max_iter):
            fx, fy = self.field(cx, cy, t)
            nx, ny = tx - fx, ty - fy
            change = max(np.abs(nx - cx).max(initial=0.0), np.abs(ny - cy).max(initial=0.0))
            cx, cy = nx, ny
            if change < tol:
                break
        else:
            raise RuntimeError(f"expression inversion did not converge (last change {change:.2e})")
        ox[sel], oy[sel] = cx, cy
        return ox, oy

    def lipschitz_bound(self, x: Array, y: Array) -> float:
        """Upper bound over the points ``(x, y)`` of the Jacobian norm of ``F`` at any activation."""
        total = np.zeros_like(x)
        for (mx, my), (rx, ry), v in zip(self.centres, self.radii, self.vectors):
            dx, dy = (x - mx) / rx, (y - my) / ry
            r = np.sqrt(dx**2 + dy**2)
            # |grad phi| = 20 (1-r)^3 |(dx/rx, dy/ry)| for r < 1
            grad = 20.0 * np.clip(1.0 - r, 0.0, None) ** 3 * np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
            total += np.linalg.norm(v) * grad
        return float(total.max(initial=0.0))


# --------------------------------------------------------------------------- textures


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


SKIN_TONES = ((0.98, 0.86, 0.76), (0.95, 0.79, 0.67), (0.87, 0.66, 0.52), (0.76, 0.55, 0.41), (0.55, 0.38, 0.27), (0.38, 0.26, 0.18))
HAIR_COLOURS = ((0.08, 0.06, 0.05), (0.25, 0.15, 0.08), (0.45, 0.30, 0.15), (0.80, 0.65, 0.40), (0.55, 0.22, 0.10), (0.65, 0.65, 0.65))
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
    def random(rng: np.random.Generator, a: float) -> "FaceLayout":
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
    a, b, s = layout.a, layout.b, ATLAS_SCALE
    half = 1.35 * b
    size = int(np.ceil(2 * half * s))
    offset = size / 2.0
    coords = (np.arange(size, dtype=np.float32) - offset) / s
    x, y = np.meshgrid(coords, coords)
    edge = 1.2  # canonical pixels of anti-aliasing ramp

    # skin: tone, low-frequency blotches, fine grain, shading toward the rim, blush
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
        _paint(rgb, _ellipse(x, y, mx, my, 1.2, 1.2, edge), tone * 0.55)

    # eyes: sclera, iris, pupil, highlight, lid line; brows
    hair_colour = np.array(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))])
    iris_colour = IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]
    gaze = rng.uniform(-0.3, 0.3, 2)
    brow_tilt = rng.uniform(-0.25, 0.2)
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

    # nose: bridge shading, tip highlight, nostrils
    nose_y = 0.5 * (layout.eye_y + layout.mouth_y) + 0.05 * b
    bridge = np.exp(-((x - 0.12 * a) / (0.05 * a)) ** 2) * (y > layout.eye_y) * (y < nose_y)
    _paint(rgb, 0.25 * bridge.astype(np.float32), tone * 0.6)
    _paint(rgb, 0.5 * _ellipse(x, y, 0, nose_y - 0.04 * b, 0.14 * a, 0.07 * b, 3 * edge), tone * 1.1)
    for side in (-1, 1):
        _paint(rgb, _ellipse(x, y, side * 0.09 * a, nose_y + 0.02 * b, 0.06 * a, 0.03 * b, edge), tone * 0.3)

    # mouth: lips with a dark gap (the gap widens when the expression opens the mouth)
    lip_colour = np.clip(tone * np.array([0.95, 0.55, 0.55]) * rng.uniform(0.8, 1.0), 0, 1)
    my, mw = layout.mouth_y, layout.mouth_w
    _paint(rgb, _ellipse(x, y, 0, my - 0.035 * b, mw, 0.05 * b, edge), lip_colour)
    _paint(rgb, _ellipse(x, y, 0, my + 0.045 * b, mw * 0.9, 0.065 * b, edge), lip_colour * 1.08)
    _paint(rgb, _ellipse(x, y, 0, my, mw * 0.95, 0.015 * b, edge), (0.2, 0.05, 0.05))

    # hair: cap above a hairline, optionally long on the sides, behind the face
    face = _smooth_step((1.0 - rho) * a, edge)
    cap = _ellipse(x, y, 0, -0.12 * b, a * rng.uniform(1.08, 1.18), b * rng.uniform(1.04, 1.12), edge)
    hairline = -b * (rng.uniform(0.48, 0.62) - 0.25 * (x / a) ** 2)
    above = _smooth_step(hairline - y, edge)
    if rng.uniform() < 0.5:  # long hair beside the face
        length = b * rng.uniform(0.2, 0.9)
        above = np.maximum(above, (1.0 - face) * _smooth_step(length - y, edge))
    hair = cap * above if rng.uniform() > 0.08 else np.zeros_like(cap)  # some subjects are bald
    strands = cv2.GaussianBlur(rng.uniform(-1, 1, (size, size)).astype(np.float32), (0, 0), sigmaX=0.6 * s, sigmaY=4 * s)
    hair_rgb = hair_colour.astype(np.float32) * (1.0 + 0.6 * strands[..., None] + 0.15 * _noise(rng, (size, size), 8 * s)[..., None])
    rgb += hair[..., None] * (hair_rgb - rgb)

    rgb = cv2.GaussianBlur(np.clip(rgb, 0.0, 1.0), (0, 0), sigmaX=0.9 * s)  # pre-filter against aliasing
    return FaceTexture(
        rgb=rgb.astype(np.float32),
        head=np.maximum(face, hair).astype(np.float32),
        face=(face * (1.0 - hair)).astype(np.float32),
        offset=offset,
        scale=s,
    )


def make_background(rng: np.random.Generator, shape: tuple[int, int], face_centre: tuple[float, float], face_a: float) -> Array:
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
            box = ((xx > x0) & (xx < x0 + rng.uniform(0.1, 0.4) * w) & (yy > y0) & (yy < y0 + rng.uniform(0.1, 0.4) * h))
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


# --------------------------------------------------------------------------- expressions

EMOTION_PEAKS: dict[str, dict[str, tuple[float, float]]] = {
    # channel -> (low, high) of the peak activation; negative smile = corners down, frown pulls brows in
    "angry": {"open": (0.0, 0.4), "smile": (-0.5, 0.0), "raise": (0.0, 0.1), "frown": (0.6, 1.0), "close": (0.2, 0.5)},
    "happy": {"open": (0.0, 0.5), "smile": (0.6, 1.0), "raise": (0.0, 0.3), "frown": (0.0, 0.0), "close": (0.1, 0.5)},
    "neutral": {"open": (0.3, 0.8), "smile": (-0.2, 0.2), "raise": (0.0, 0.3), "frown": (0.0, 0.2), "close": (0.0, 0.9)},
    "sad": {"open": (0.0, 0.3), "smile": (-1.0, -0.5), "raise": (0.2, 0.5), "frown": (0.2, 0.5), "close": (0.2, 0.6)},
    "surprise": {"open": (0.6, 1.0), "smile": (-0.1, 0.2), "raise": (0.6, 1.0), "frown": (0.0, 0.0), "close": (0.0, 0.1)},
}


@dataclass(frozen=True)
class _Activation:
    """Smooth activation ``peak * (1 - cos(omega t + phase)) / 2`` in [0, peak]."""

    peak: float
    omega: float
    phase: float

    def __call__(self, t: float) -> float:
        return float(self.peak * 0.5 * (1.0 - np.cos(self.omega * t + self.phase)))


def make_expression(rng: np.random.Generator, layout: FaceLayout, emotion: str) -> ExpressionField:
    """Expression bumps (forward skin motion) for ``emotion``, made contractive."""
    peaks = {ch: float(rng.uniform(*rng_range)) for ch, rng_range in EMOTION_PEAKS[emotion].items()}
    a, b = layout.a, layout.b
    bumps: list[tuple[tuple[float, float], tuple[float, float], tuple[float, float], str]] = []
    # (centre, radii, forward motion at activation 1 for a positive channel value, channel)
    bumps.append(((0.0, layout.mouth_y + 0.3 * b), (0.75 * a, 0.6 * b), (0.0, 0.2 * b), "open"))
    bumps.append(((0.0, layout.mouth_y - 0.08 * b), (0.5 * a, 0.25 * b), (0.0, -0.05 * b), "open"))
    for side in (-1, 1):
        ex = side * layout.eye_x
        bumps.append(((side * layout.mouth_w, layout.mouth_y), (0.4 * a, 0.3 * b), (side * 0.12 * a, -0.1 * b), "smile"))
        bumps.append(((ex, layout.brow_y), (0.45 * a, 0.3 * b), (0.0, -0.12 * b), "raise"))
        bumps.append(((ex, layout.brow_y), (0.45 * a, 0.3 * b), (-side * 0.08 * a, 0.08 * b), "frown"))
        bumps.append(((ex, layout.eye_y - 0.6 * layout.eye_h), (1.4 * layout.eye_w, 2.6 * layout.eye_h), (0.0, 0.9 * layout.eye_h), "close"))

    centres, radii, vectors, acts = [], [], [], []
    channel_act = {
        ch: _Activation(abs(peaks[ch]), float(rng.uniform(0.4, 1.0)), float(rng.uniform(0, 2 * np.pi))) for ch in peaks
    }
    for centre, rad, motion, ch in bumps:
        if peaks[ch] == 0.0:
            continue
        v = -np.sign(peaks[ch]) * np.array(motion)  # backward field = minus forward motion
        # keep each bump clearly contractive: max |grad phi| = 2.11 / min radius
        v *= min(1.0, 0.5 * min(rad) / (2.11 * np.linalg.norm(v)))
        centres.append(centre)
        radii.append(rad)
        vectors.append(v)
        acts.append(channel_act[ch])
    field = ExpressionField(np.array(centres).reshape(-1, 2), np.array(radii).reshape(-1, 2), np.array(vectors).reshape(-1, 2), tuple(acts))
    grid = np.linspace(-1.5 * b, 1.5 * b, 241)
    gx, gy = np.meshgrid(grid, grid)
    bound = field.lipschitz_bound(gx, gy)
    if bound > MAX_EXPRESSION_LIPSCHITZ:
        field = ExpressionField(field.centres, field.radii, field.vectors * (MAX_EXPRESSION_LIPSCHITZ / bound), field.activations)
    return field


# --------------------------------------------------------------------------- sequences


@dataclass
class SyntheticSequence:
    """One rendered subject: ``n`` frames, ``n - 1`` flows per kind and ``n`` masks.

    Frames are uint8 ``[H, W, 3]`` RGB (before JPEG), flows float32 ``[H, W, 2]``,
    masks bool ``[H, W]``.
    """

    facial_frames: list[Array]
    head_frames: list[Array]
    flows_facial: list[Array]
    flows_head: list[Array]
    masks: list[Array]


@dataclass(frozen=True)
class SyntheticSubject:
    """A random face with its head motion, expression and background; renders frames and flows."""

    size: tuple[int, int]
    texture: FaceTexture
    expression: ExpressionField
    motion: HeadMotion
    canvas: Array  # background canvas, ``margin`` pixels larger than the frame on each side
    margin: int
    bg_x: Oscillation
    bg_y: Oscillation

    @staticmethod
    def random(size: tuple[int, int], seed: int | Sequence[int], emotion: str = "happy") -> "SyntheticSubject":
        """Draw a subject deterministically from ``seed``; ``emotion`` picks the expression preset."""
        if emotion not in EMOTION_PEAKS:
            raise ValueError(f"unknown emotion {emotion!r}, choose from {sorted(EMOTION_PEAKS)}")
        h, w = size
        if min(h, w) < 32:
            raise ValueError(f"image size must be at least 32x32, got {h}x{w}")
        rng = np.random.default_rng(seed)
        side = float(min(h, w))
        layout = FaceLayout.random(rng, a=side * rng.uniform(0.16, 0.21))
        texture = make_face_texture(rng, layout)
        expression = make_expression(rng, layout, emotion)
        centre = (w / 2 + rng.uniform(-0.05, 0.05) * w, h * rng.uniform(0.42, 0.5))
        motion = HeadMotion(
            centre=centre,
            angle0=float(rng.uniform(-0.12, 0.12)),
            angle=Oscillation.random(rng, 0.15),
            tx=Oscillation.random(rng, 0.07 * side),
            ty=Oscillation.random(rng, 0.05 * side),
            log_scale=Oscillation.random(rng, 0.08, centred=False),
            persp_x=Oscillation.random(rng, 0.3 / side, centred=False),
            persp_y=Oscillation.random(rng, 0.3 / side, centred=False),
        )
        margin = max(8, int(np.ceil(0.04 * side)) + 2)
        canvas = make_background(rng, (h + 2 * margin, w + 2 * margin), (centre[0] + margin, centre[1] + margin), layout.a)
        moving = rng.uniform() < 0.5  # half of the subjects have a gently panning background
        return SyntheticSubject(
            size=(h, w),
            texture=texture,
            expression=expression,
            motion=motion,
            canvas=canvas,
            margin=margin,
            bg_x=Oscillation.random(rng, 0.015 * side if moving else 0.0),
            bg_y=Oscillation.random(rng, 0.01 * side if moving else 0.0),
        )

    def pixel_grid(self) -> tuple[Array, Array]:
        """Float64 ``(x, y)`` coordinates of every pixel centre."""
        py, px = np.mgrid[0 : self.size[0], 0 : self.size[1]].astype(np.float64)
        return px, py

    def canonical_point(self, t: int, x: Array, y: Array) -> tuple[Array, Array]:
        """Deformed canonical point ``c' = H_t^-1(p)`` seen at pixel ``(x, y)`` of frame ``t``."""
        return apply_homography(np.linalg.inv(self.motion.homography(t)), x, y)

    def texture_point(self, t: int, x: Array, y: Array, expression_frame: int | None = None) -> tuple[Array, Array]:
        """Texture point ``G_e(H_t^-1(p))`` seen at pixel ``(x, y)`` of frame ``t``.

        ``e`` is ``t`` (facial rendering) or ``expression_frame`` (``0`` for head-only rendering).
        """
        e = t if expression_frame is None else expression_frame
        return self.expression.backward(*self.canonical_point(t, x, y), e)

    def background_shift(self, t: int) -> tuple[float, float]:
        """Translation of the background at frame ``t`` (pixels)."""
        return self.bg_x(t), self.bg_y(t)

    def render(self, t: int, expression_frame: int | None = None) -> tuple[Array, Array, Array]:
        """Render frame ``t``: uint8 RGB image, head coverage and face coverage (float 0..1)."""
        px, py = self.pixel_grid()
        rgb, head, face = self.texture.sample(*self.texture_point(t, px, py, expression_frame))
        sx, sy = self.background_shift(t)
        bg = cv2.remap(
            self.canvas,
            (px - sx + self.margin).astype(np.float32),
            (py - sy + self.margin).astype(np.float32),
            interpolation=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT,
        )
        image = head[..., None] * rgb + (1.0 - head[..., None]) * bg
        return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8), head, face

    def flows(self, t: int, on_head: Array | None = None) -> tuple[Array, Array]:
        """Exact facial and head flow from frame ``t`` to ``t + 1`` (float32 ``[H, W, 2]``).

        Head pixels of frame ``t`` (head coverage >= 0.5) follow their texture point
        (facial) or their deformed canonical point (head); other pixels move with the
        background. ``on_head``: that coverage test if the caller has rendered frame ``t``.
        """
        px, py = self.pixel_grid()
        dx, dy = self.canonical_point(t, px, py)
        tx, ty = self.expression.backward(dx, dy, t)
        if on_head is None:
            on_head = self.texture.sample(tx, ty)[1] >= 0.5
        sx0, sy0 = self.background_shift(t)
        sx1, sy1 = self.background_shift(t + 1)
        flow_f = np.empty((*self.size, 2), np.float64)
        flow_f[..., 0], flow_f[..., 1] = sx1 - sx0, sy1 - sy0
        flow_h = flow_f.copy()
        nxt = self.motion.homography(t + 1)
        qx, qy = apply_homography(nxt, *self.expression.forward(tx[on_head], ty[on_head], t + 1))
        flow_f[on_head] = np.stack([qx - px[on_head], qy - py[on_head]], axis=-1)
        hx, hy = apply_homography(nxt, dx[on_head], dy[on_head])
        flow_h[on_head] = np.stack([hx - px[on_head], hy - py[on_head]], axis=-1)
        return flow_f.astype(np.float32), flow_h.astype(np.float32)


def render_sequence(size: tuple[int, int], frames: int, seed: int | Sequence[int], emotion: str = "happy") -> SyntheticSequence:
    """Render one synthetic subject of ``frames`` frames at ``size = (H, W)``.

    ``frames=2`` gives a single demo pair. Deterministic for a given ``seed``.
    """
    if frames < 2:
        raise ValueError(f"a sequence needs at least 2 frames, got {frames}")
    subject = SyntheticSubject.random(size, seed, emotion)
    seq = SyntheticSequence([], [], [], [], [])
    for t in range(frames):
        image, head, face = subject.render(t)
        seq.facial_frames.append(image)
        seq.head_frames.append(subject.render(t, expression_frame=0)[0])
        seq.masks.append(face >= 0.5)
        if t + 1 < frames:
            flow_f, flow_h = subject.flows(t, on_head=head >= 0.5)
            seq.flows_facial.append(flow_f)
            seq.flows_head.append(flow_h)
    return seq


# --------------------------------------------------------------------------- checking


def backward_warp(image: Array, flow: Array) -> tuple[Array, Array]:
    """Sample ``image`` at ``p + flow(p)`` (bilinear).

    Returns:
        ``(warped, inside)``: float32 warped image and a bool map of the pixels whose
        target lies inside the image.
    """
    h, w = flow.shape[:2]
    py, px = np.mgrid[0:h, 0:w].astype(np.float32)
    mx, my = px + flow[..., 0], py + flow[..., 1]
    warped = cv2.remap(image.astype(np.float32), mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    return warped, inside


def warp_error(frame1: Array, frame2: Array, flow: Array, region: Array) -> float:
    """Mean absolute difference (0..255) between ``frame1`` and ``frame2`` warped back by ``flow``.

    Only pixels of ``region`` whose target is inside ``frame2`` count.
    """
    warped, inside = backward_warp(frame2, flow)
    sel = region & inside
    if not sel.any():
        raise ValueError("no pixel of the region maps inside the second frame")
    return float(np.abs(warped[sel] - frame1.astype(np.float32)[sel]).mean())


def erode(mask: Array, pixels: int) -> Array:
    """Erode a bool mask by ``pixels`` (drops anti-aliased and occlusion boundaries)."""
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel).astype(bool)


# --------------------------------------------------------------------------- writing


def _split_seed(seed: int, split: str, subject: int) -> list[int]:
    return [seed, zlib.crc32(split.encode()), subject]


def subject_folder(subject: int) -> tuple[str, str]:
    """``(emotion, subject name)`` of the 0-based subject index within a split."""
    return EMOTIONS[subject % len(EMOTIONS)], f"subject{subject + 1:03d}"


def write_sequence(seq: SyntheticSequence, root: Path, split: str, emotion: str, subject: str) -> None:
    """Write one sequence into the FacialFlowNet layout under ``root``."""
    rel = Path(split) / emotion / subject
    folders = {"image/facial": Path("image", "facial"), "image/head": Path("image", "head"), **LABEL_FOLDERS}
    dirs = {name: root / folder / rel for name, folder in folders.items()}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    for i, (facial, head, mask) in enumerate(zip(seq.facial_frames, seq.head_frames, seq.masks)):
        stem = f"{i + 1:04d}"
        for key, image in (("image/facial", facial), ("image/head", head)):
            if not cv2.imwrite(str(dirs[key] / f"{stem}.jpg"), image[:, :, ::-1], jpeg):
                raise OSError(f"could not write {dirs[key] / f'{stem}.jpg'}")
        np.save(dirs["mask"] / f"{stem}.npy", mask)
        if i < len(seq.flows_facial):
            frame_utils.write_flo(dirs["flow/facial"] / f"{stem}.flo", seq.flows_facial[i])
            frame_utils.write_flo(dirs["flow/head"] / f"{stem}.flo", seq.flows_head[i])


def generate(
    root: str | Path,
    subjects: int,
    frames: int,
    size: tuple[int, int],
    seed: int = 0,
    splits: Sequence[str] = SPLITS,
    progress: bool = False,
) -> list[Path]:
    """Write a synthetic FacialFlowNet dataset; return the sequence folders (under ``image/facial``).

    Subject ``j`` of a split goes to emotion ``EMOTIONS[j % 5]`` and folder
    ``subject{j+1:03d}``; its content depends only on ``(seed, split, j)``.
    """
    if subjects < 1:
        raise ValueError(f"subjects must be at least 1, got {subjects}")
    root = Path(root)
    jobs = [(split, j) for split in splits for j in range(subjects)]
    written = []
    for split, j in tqdm(jobs, desc="synthetic FacialFlowNet", unit="subject", disable=not progress):
        emotion, name = subject_folder(j)
        seq = render_sequence(tuple(size), frames, _split_seed(seed, split, j), emotion)
        write_sequence(seq, root, split, emotion, name)
        written.append(root / "image" / "facial" / split / emotion / name)
    return written


def verify(root: str | Path, splits: Sequence[str] = SPLITS) -> dict[str, float]:
    """Mean warp error on eroded face masks for facial and head flow, and with zero flow.

    Facial flow is checked on ``image/facial`` frames, head flow on ``image/head`` frames.
    """
    root = Path(root)
    errors: dict[str, list[float]] = {"facial": [], "head": [], "facial_zero": [], "head_zero": []}
    for split in splits:
        for flow_path in sorted((root / "flow" / "facial" / split).glob("*/*/*.flo")):
            rel = flow_path.relative_to(root / "flow" / "facial")
            mask = erode(np.load(root / "mask" / rel.with_suffix(".npy")), 2)
            nxt = f"{int(rel.stem) + 1:04d}.jpg"
            for kind in ("facial", "head"):
                img_dir = root / "image" / kind / rel.parent
                f1 = frame_utils.read_image(img_dir / rel.with_suffix(".jpg").name)
                f2 = frame_utils.read_image(img_dir / nxt)
                flow = frame_utils.read_flo(root / "flow" / kind / rel)
                errors[kind].append(warp_error(f1, f2, flow, mask))
                errors[f"{kind}_zero"].append(warp_error(f1, f2, np.zeros_like(flow), mask))
    if not errors["facial"]:
        raise ValueError(f"no flows found under {root / 'flow' / 'facial'}")
    return {k: float(np.mean(v)) for k, v in errors.items()}


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (``python -m core.synthetic --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m core.synthetic",
        description="Write a synthetic dataset in the FacialFlowNet layout (image/facial, image/head, "
        "flow/facial, flow/head, mask) with exact ground-truth facial and head flow.",
    )
    parser.add_argument("--root", required=True, type=Path, help="output folder (the FacialFlowNet root)")
    parser.add_argument("--subjects", type=int, default=3, help="subjects (sequences) per split (default: 3)")
    parser.add_argument("--frames", type=int, default=5, help="frames per subject, >= 2 (default: 5)")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"), help="frame height and width (default: 256 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; equal seeds give identical data (default: 0)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), help="splits to write (default: train val test)")
    parser.add_argument("--verify", action="store_true", help="after writing, report the warp error of the ground truth on face pixels")
    parser.add_argument("--no-progress", "--no_progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    written = generate(args.root, args.subjects, args.frames, tuple(args.size), args.seed, args.splits, progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    pairs = len(written) * (args.frames - 1)
    print(f"wrote {len(written)} sequences ({pairs} pairs, {args.size[0]}x{args.size[1]}) to {args.root} in {elapsed:.2f} s")
    if args.verify:
        err = verify(args.root, args.splits)
        print(
            f"mean warp error on face pixels (0..255): facial {err['facial']:.2f} (zero flow {err['facial_zero']:.2f}), "
            f"head {err['head']:.2f} (zero flow {err['head_zero']:.2f})"
        )


if __name__ == "__main__":
    main()
