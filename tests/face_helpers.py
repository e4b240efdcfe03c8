"""The issue's clip: scikit-image's astronaut (a real, public-domain photo) on a 1280x720
blurred-noise canvas, moving 6 px right and 3 px down per frame.

With OpenCV 4.14's default Haar cascade (scale factor 1.1, 5 neighbours) this background gives
false positives besides the real 95 px face: two static 67 and 71 px boxes on the noise in every
frame, a 98-120 px box on the photo's right edge in most frames and 129-131 px boxes on the
photo in half of them (measured; `tests/test_face.py` checks that the situation is there).
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage import data

CANVAS = (720, 1280)  # H, W
START = (300, 100)  # x, y of the photo's top-left corner in frame 0
STEP = (6, 3)  # px per frame: right, down
FACE_IN_PHOTO = (177, 66, 95, 95)  # Haar's box on the bare 512x512 photo (x, y, w, h)
BACKGROUND_SEED, BACKGROUND_BLUR, BACKGROUND_CONTRAST = 5, 6.0, 40.0


def background() -> np.ndarray:
    """Gaussian noise blurred by a 6 px sigma, 128 +- 40 grey levels: `[720, 1280, 3]` uint8."""
    noise = np.random.default_rng(BACKGROUND_SEED).normal(0, 1, (*CANVAS, 3)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), BACKGROUND_BLUR)
    noise = (noise - noise.mean()) / noise.std()
    return np.clip(128 + BACKGROUND_CONTRAST * noise, 0, 255).astype(np.uint8)


def offset(frame: int) -> tuple[int, int]:
    return START[0] + STEP[0] * frame, START[1] + STEP[1] * frame


def astronaut_clip(count: int) -> list[np.ndarray]:
    """`count` RGB frames of the clip."""
    photo, canvas = data.astronaut(), background()
    frames = []
    for i in range(count):
        x, y = offset(i)
        frame = canvas.copy()
        frame[y : y + photo.shape[0], x : x + photo.shape[1]] = photo
        frames.append(frame)
    return frames


def real_face(frame: int) -> tuple[int, int, int, int]:
    """The astronaut's face (x, y, w, h) in frame pixels."""
    x, y = offset(frame)
    return FACE_IN_PHOTO[0] + x, FACE_IN_PHOTO[1] + y, FACE_IN_PHOTO[2], FACE_IN_PHOTO[3]


def contains(outer: tuple[float, float, float, float], inner: tuple[float, float, float, float]) -> bool:
    return (
        outer[0] <= inner[0]
        and outer[1] <= inner[1]
        and inner[0] + inner[2] <= outer[0] + outer[2]
        and inner[1] + inner[3] <= outer[1] + outer[3]
    )
