"""Face detectors: `make_detector("haar")` (OpenCV's frontal-face Haar cascade, which the
opencv-python(-headless) 4.x wheels ship in `cv2.data.haarcascades`) or
`make_detector("yunet:PATH")` (the user's YuNet ONNX file, through `cv2.FaceDetectorYN`).

A detector maps an RGB frame to its `Detection`s: boxes in frame pixels with a confidence
(the Haar cascade's level weight, YuNet's score). Choosing the face among them is
`core.face.crop`'s work.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Protocol

import cv2
import numpy as np

from core.errors import UserError

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
# detectMultiScale's own defaults: pyramid step and neighbours a detection needs
HAAR_SCALE_FACTOR = 1.1
HAAR_MIN_NEIGHBORS = 5
# Smallest face searched, as a fraction of the frame's shorter side (36 px at 720p): a smaller
# face is no crop DecFlow can use (it would be upscaled over 8x to 480 px), and the smallest
# pyramid levels take a third of the detection time.
MIN_FACE_FRACTION = 1 / 20
YUNET_SCORE = 0.9  # cv2.FaceDetectorYN's default score threshold
YUNET_SCORE_COLUMN = 14  # a YuNet row: box (4), five landmarks (10), score


class Detection(NamedTuple):
    """One detected face: `box` (x, y, w, h) in frame pixels and the detector's confidence."""

    box: tuple[float, float, float, float]
    score: float


class FaceDetector(Protocol):
    name: str  # the detector in words (for the JSON and messages)

    def detect(self, rgb: np.ndarray) -> list[Detection]: ...


def _min_side(rgb: np.ndarray) -> int:
    return max(int(min(rgb.shape[:2]) * MIN_FACE_FRACTION), 1)


class HaarDetector:
    """OpenCV's frontal-face Haar cascade; the score is `detectMultiScale3`'s level weight."""

    def __init__(self) -> None:
        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        path = Path(folder or "") / HAAR_CASCADE
        if not hasattr(cv2, "CascadeClassifier") or not path.is_file():
            raise UserError(
                f"--face_detector haar: OpenCV {cv2.__version__} ships no {HAAR_CASCADE} "
                "(install opencv-python-headless<5, or pass --face_detector yunet:PATH)"
            )
        self.cascade = cv2.CascadeClassifier(str(path))
        self.name = f"haar ({HAAR_CASCADE}, OpenCV {cv2.__version__})"

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        side = _min_side(rgb)
        boxes, _, weights = self.cascade.detectMultiScale3(
            gray,
            scaleFactor=HAAR_SCALE_FACTOR,
            minNeighbors=HAAR_MIN_NEIGHBORS,
            minSize=(side, side),
            outputRejectLevels=True,
        )
        return [Detection(tuple(float(v) for v in box), float(w)) for box, w in zip(boxes, np.ravel(weights))]


class YuNetDetector:
    """The user's YuNet ONNX file (OpenCV's face-detection model zoo), through `cv2.FaceDetectorYN`."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise UserError(f"--face_detector yunet:{path}: no such file")
        try:
            self.model = cv2.FaceDetectorYN.create(str(path), "", (320, 320), YUNET_SCORE)
        except cv2.error as error:
            reason = (error.err or "").replace(str(path), path.name)[:60]
            raise UserError(
                f"--face_detector yunet:{path}: OpenCV cannot load it as a YuNet model ({reason})"
            ) from None
        self.name = f"yunet ({path.name}, OpenCV {cv2.__version__})"

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        height, width = rgb.shape[:2]
        self.model.setInputSize((width, height))
        _, faces = self.model.detect(np.ascontiguousarray(rgb[..., ::-1]))
        side = _min_side(rgb)
        rows = [] if faces is None else faces
        return [
            Detection(tuple(float(v) for v in row[:4]), float(row[YUNET_SCORE_COLUMN]))
            for row in rows
            if min(row[2], row[3]) >= side
        ]


def make_detector(spec: str) -> FaceDetector:
    """`haar`, or `yunet:PATH`; UserError naming --face_detector otherwise."""
    if spec == "haar":
        return HaarDetector()
    kind, _, path = spec.partition(":")
    if kind == "yunet" and path:
        return YuNetDetector(Path(path))
    raise UserError(f"--face_detector must be haar or yunet:PATH (a YuNet ONNX file), got {spec!r}")
