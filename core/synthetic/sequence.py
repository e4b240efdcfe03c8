"""A synthetic subject (face, head motion, expression, background) rendered into frames with exact flow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from core.synthetic.motion import (
    EMOTION_PEAKS,
    ExpressionField,
    HeadMotion,
    Oscillation,
    apply_homography,
    make_expression,
)
from core.synthetic.texture import Array, FaceLayout, FaceTexture, make_background, make_face_texture

#: Motion time between consecutive frames. Every motion (head pose, expression, background) is
#: a smooth function of time, with amplitudes proportional to the frame side: at 160x160 the face
#: moves about 1.6 px per frame on average, at 512x512 about 5 px. A larger interval renders the
#: same motion at a lower frame rate (2: every second frame), so the motion per frame grows with
#: it (about 3.5 px at 160x160 for 2, 5 px for 3) while poses, framing and expressions keep their
#: ranges and the expression field stays invertible.
FRAME_INTERVAL = 1.0

#: Face size relative to the default draw (face half-width 16-21 % of the frame's shorter side, so
#: the face covers about 11 % of the frame). 2 makes the face about twice as wide and tall, filling
#: most of the frame; the head motion, expression and background keep their draws.
FACE_SCALE = 1.0


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
    frame_interval: float = FRAME_INTERVAL  # motion time between frames ``t`` and ``t + 1``

    @staticmethod
    def random(
        size: tuple[int, int],
        seed: int | Sequence[int],
        emotion: str = "happy",
        frame_interval: float = FRAME_INTERVAL,
        face_scale: float = FACE_SCALE,
    ) -> SyntheticSubject:
        """Draw a subject deterministically from ``seed``; ``emotion`` picks the expression preset.

        ``frame_interval`` is the motion time between consecutive frames (see :data:`FRAME_INTERVAL`);
        the subject itself (face, motion, background) does not depend on it. ``face_scale`` scales
        the face's size (see :data:`FACE_SCALE`); every other draw stays the same.
        """
        if not frame_interval > 0:
            raise ValueError(f"frame_interval must be positive, got {frame_interval}")
        if not face_scale > 0:
            raise ValueError(f"face_scale must be positive, got {face_scale}")
        if emotion not in EMOTION_PEAKS:
            raise ValueError(f"unknown emotion {emotion!r}, choose from {sorted(EMOTION_PEAKS)}")
        h, w = size
        if min(h, w) < 32:
            raise ValueError(f"image size must be at least 32x32, got {h}x{w}")
        rng = np.random.default_rng(seed)
        side = float(min(h, w))
        layout = FaceLayout.random(rng, a=side * rng.uniform(0.16, 0.21) * face_scale)
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
        canvas = make_background(
            rng, (h + 2 * margin, w + 2 * margin), (centre[0] + margin, centre[1] + margin), layout.a
        )
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
            frame_interval=float(frame_interval),
        )

    def time(self, t: int) -> float:
        """Motion time of frame ``t``."""
        return t * self.frame_interval

    def pixel_grid(self) -> tuple[Array, Array]:
        """Float64 ``(x, y)`` coordinates of every pixel centre."""
        py, px = np.mgrid[0 : self.size[0], 0 : self.size[1]].astype(np.float64)
        return px, py

    def canonical_point(self, t: int, x: Array, y: Array) -> tuple[Array, Array]:
        """Deformed canonical point ``c' = H_t^-1(p)`` seen at pixel ``(x, y)`` of frame ``t``."""
        return apply_homography(np.linalg.inv(self.motion.homography(self.time(t))), x, y)

    def texture_point(self, t: int, x: Array, y: Array, expression_frame: int | None = None) -> tuple[Array, Array]:
        """Texture point ``G_e(H_t^-1(p))`` seen at pixel ``(x, y)`` of frame ``t``.

        ``e`` is ``t`` (facial rendering) or ``expression_frame`` (``0`` for head-only rendering).
        """
        e = t if expression_frame is None else expression_frame
        return self.expression.backward(*self.canonical_point(t, x, y), self.time(e))

    def background_shift(self, t: int) -> tuple[float, float]:
        """Translation of the background at frame ``t`` (pixels)."""
        return self.bg_x(self.time(t)), self.bg_y(self.time(t))

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
        tx, ty = self.expression.backward(dx, dy, self.time(t))
        if on_head is None:
            on_head = self.texture.sample(tx, ty)[1] >= 0.5
        sx0, sy0 = self.background_shift(t)
        sx1, sy1 = self.background_shift(t + 1)
        flow_f = np.empty((*self.size, 2), np.float64)
        flow_f[..., 0], flow_f[..., 1] = sx1 - sx0, sy1 - sy0
        flow_h = flow_f.copy()
        nxt = self.motion.homography(self.time(t + 1))
        qx, qy = apply_homography(nxt, *self.expression.forward(tx[on_head], ty[on_head], self.time(t + 1)))
        flow_f[on_head] = np.stack([qx - px[on_head], qy - py[on_head]], axis=-1)
        hx, hy = apply_homography(nxt, dx[on_head], dy[on_head])
        flow_h[on_head] = np.stack([hx - px[on_head], hy - py[on_head]], axis=-1)
        return flow_f.astype(np.float32), flow_h.astype(np.float32)


def render_sequence(
    size: tuple[int, int],
    frames: int,
    seed: int | Sequence[int],
    emotion: str = "happy",
    frame_interval: float = FRAME_INTERVAL,
    face_scale: float = FACE_SCALE,
) -> SyntheticSequence:
    """Render one synthetic subject of ``frames`` frames at ``size = (H, W)``.

    ``frames=2`` gives a single demo pair. Deterministic for a given ``seed``;
    ``frame_interval``: see :data:`FRAME_INTERVAL`; ``face_scale``: see :data:`FACE_SCALE`.
    """
    if frames < 2:
        raise ValueError(f"a sequence needs at least 2 frames, got {frames}")
    subject = SyntheticSubject.random(size, seed, emotion, frame_interval, face_scale)
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
