"""Motion fields: the rigid head motion (a homography per frame) and the expression field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from core.synthetic.texture import Array, FaceLayout

#: Upper bound of the Lipschitz constant of the expression field.
MAX_EXPRESSION_LIPSCHITZ = 0.7


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
    def random(rng: np.random.Generator, max_amplitude: float, centred: bool = True) -> Oscillation:
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


EMOTION_PEAKS: dict[str, dict[str, tuple[float, float]]] = {
    # channel -> (low, high) of the peak activation; negative smile = corners down, frown pulls brows in
    "angry": {"open": (0.0, 0.4), "smile": (-0.5, 0.0), "raise": (0.0, 0.1), "frown": (0.6, 1.0), "close": (0.2, 0.5)},
    "happy": {"open": (0.0, 0.5), "smile": (0.6, 1.0), "raise": (0.0, 0.3), "frown": (0.0, 0.0), "close": (0.1, 0.5)},
    "neutral": {
        "open": (0.3, 0.8),
        "smile": (-0.2, 0.2),
        "raise": (0.0, 0.3),
        "frown": (0.0, 0.2),
        "close": (0.0, 0.9),
    },
    "sad": {"open": (0.0, 0.3), "smile": (-1.0, -0.5), "raise": (0.2, 0.5), "frown": (0.2, 0.5), "close": (0.2, 0.6)},
    "surprise": {
        "open": (0.6, 1.0),
        "smile": (-0.1, 0.2),
        "raise": (0.6, 1.0),
        "frown": (0.0, 0.0),
        "close": (0.0, 0.1),
    },
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
        bumps.append(
            ((side * layout.mouth_w, layout.mouth_y), (0.4 * a, 0.3 * b), (side * 0.12 * a, -0.1 * b), "smile")
        )
        bumps.append(((ex, layout.brow_y), (0.45 * a, 0.3 * b), (0.0, -0.12 * b), "raise"))
        bumps.append(((ex, layout.brow_y), (0.45 * a, 0.3 * b), (-side * 0.08 * a, 0.08 * b), "frown"))
        bumps.append(
            (
                (ex, layout.eye_y - 0.6 * layout.eye_h),
                (1.4 * layout.eye_w, 2.6 * layout.eye_h),
                (0.0, 0.9 * layout.eye_h),
                "close",
            )
        )

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
    field = ExpressionField(
        np.array(centres).reshape(-1, 2), np.array(radii).reshape(-1, 2), np.array(vectors).reshape(-1, 2), tuple(acts)
    )
    grid = np.linspace(-1.5 * b, 1.5 * b, 241)
    gx, gy = np.meshgrid(grid, grid)
    bound = field.lipschitz_bound(gx, gy)
    if bound > MAX_EXPRESSION_LIPSCHITZ:
        field = ExpressionField(
            field.centres, field.radii, field.vectors * (MAX_EXPRESSION_LIPSCHITZ / bound), field.activations
        )
    return field
