"""One fixed square face crop per sequence, never a per-frame crop: a crop that moves adds false
motion to the head flow, which is what DecFlow separates.

The detector runs on a sample of the sequence's frames. Its detections are linked across the
samples into tracks (a detection continues a track when it overlaps the track's last box), and
the face is chosen from the evidence of each track:
- persistence and confidence together: the sum of the detector's scores (Haar's
  `detectMultiScale3` level weights) over the samples, a sample without the track counting 0;
  boxes that appear in half the frames, or with low weights, lose against one in every frame;
- plausible size and motion: a track keeps boxes of one size (within `LINK_SIZE_RATIO`) that
  move less than their own size between samples, and a face is at least `MIN_FACE_FRACTION`
  of the frame (`core.face.detect`);
- several faces (tracks with at least `CANDIDATE_EVIDENCE` of the strongest's evidence): the
  largest.
The crop is the square around the union of the face's boxes, enlarged by `margin` times the
face's side on every side, but never larger than the frame's shorter side (a face that already
fills the frame, as in a pre-cropped corpus, gets less margin), then shifted inside the frame
(a face near an edge is off-centre in its crop): a planned square never leaves the frame, and
no pixel is invented. It is resized to `size`. A `FaceCrop` built by hand may leave the frame;
there the frame's edge pixels are repeated (replicate padding, as the flow's own input padder)
and `padding()` says how many on each side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from core.defaults import TRAIN_IMAGE_SIZE
from core.errors import UserError
from core.face.detect import Detection, FaceDetector

# Default --face_margin: the crop adds a quarter of the face's side on each side, so a still face's
# Haar box spans 1 / 1.5 = 0.67 of the crop, the middle of the 0.6-0.75 it spans in face-cropped
# datasets (CASME II-style clips, posed-expression crops) like the FacialFlowNet frames DecFlow learned on.
FACE_MARGIN = 0.25
FACE_SIZE = TRAIN_IMAGE_SIZE[0]  # default --face_size: DecFlow's training crop side
FACE_SAMPLES = 8  # frames of a sequence the detector runs on (evenly spaced, first and last included)
LINK_IOU = 0.3  # a detection continues a track when it overlaps the track's last box this much
LINK_SIZE_RATIO = 1.5  # ... and its side is within this factor of that box's
CANDIDATE_EVIDENCE = 0.75  # a track is one of several faces with this fraction of the strongest's evidence


@dataclass(frozen=True)
class FaceCropOptions:
    """How `--face_crop` finds the face and crops it."""

    detector: FaceDetector = field(compare=False)
    margin: float = FACE_MARGIN  # crop side = face boxes' extent + 2 * margin * face side
    size: int = FACE_SIZE  # px: the crop is resized to size x size
    paste_back: bool = False  # also write the flows in full-frame coordinates
    samples: int = FACE_SAMPLES

    def __post_init__(self) -> None:
        if not (np.isfinite(self.margin) and self.margin >= 0):
            raise UserError(f"--face_margin must be >= 0, got {self.margin}")
        if self.size < 32:
            raise UserError(f"--face_size must be >= 32 px, got {self.size}")
        if self.samples < 1:
            raise UserError(f"face samples must be >= 1, got {self.samples}")


def sample_positions(count: int, samples: int) -> list[int]:
    """`samples` evenly spaced positions among `count` frames (first and last included)."""
    return sorted({int(round(p)) for p in np.linspace(0, count - 1, min(count, samples))})


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def box_side(box: Sequence[float]) -> float:
    return max(box[2], box[3])


@dataclass
class FaceTrack:
    """Detections of one face across the sampled frames: sample index -> detection."""

    hits: dict[int, Detection] = field(default_factory=dict)

    def last(self) -> Detection:
        return self.hits[max(self.hits)]

    def continues(self, detection: Detection) -> bool:
        last = self.last().box
        ratio = box_side(detection.box) / box_side(last)
        return iou(last, detection.box) >= LINK_IOU and 1 / LINK_SIZE_RATIO <= ratio <= LINK_SIZE_RATIO

    def evidence(self, samples: int) -> float:
        """Persistence and confidence: the mean score over all samples (0 where missing, negatives as 0)."""
        return sum(max(d.score, 0.0) for d in self.hits.values()) / samples

    def side(self) -> float:
        return float(np.median([box_side(d.box) for d in self.hits.values()]))

    def union(self) -> tuple[float, float, float, float]:
        """(x, y, w, h) of the box that covers every detection of the track."""
        boxes = np.array([d.box for d in self.hits.values()])  # [N, 4]
        x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
        x1, y1 = (boxes[:, 0] + boxes[:, 2]).max(), (boxes[:, 1] + boxes[:, 3]).max()
        return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def link_tracks(per_sample: Sequence[Sequence[Detection]]) -> list[FaceTrack]:
    """Tracks of the detections of each sample (strongest first), each continuing the track it overlaps most."""
    tracks: list[FaceTrack] = []
    for index, detections in enumerate(per_sample):
        for detection in sorted(detections, key=lambda d: -d.score):
            open_tracks = [t for t in tracks if index not in t.hits and t.continues(detection)]
            if open_tracks:
                max(open_tracks, key=lambda t: iou(t.last().box, detection.box)).hits[index] = detection
            else:
                tracks.append(FaceTrack({index: detection}))
    return tracks


def choose_face(per_sample: Sequence[Sequence[Detection]]) -> tuple[FaceTrack, int] | None:
    """The face and the number of faces the evidence supports (None: no detection at all)."""
    tracks = link_tracks(per_sample)
    if not tracks:
        return None
    evidence = {id(t): t.evidence(len(per_sample)) for t in tracks}
    strongest = max(evidence.values())
    faces = [t for t in tracks if evidence[id(t)] >= CANDIDATE_EVIDENCE * strongest]
    return max(faces, key=lambda t: (t.side(), evidence[id(t)])), len(faces)


@dataclass(frozen=True)
class FaceCrop:
    """The fixed crop of a sequence: the square (x, y, side) in frame pixels, resized to `size`."""

    x: int
    y: int
    side: int
    size: int
    frame_size: tuple[int, int]  # (height, width) of the frames
    face: tuple[float, float, float, float]  # (x, y, w, h) covering the face's detections
    detector: str
    sampled: list[str]  # the frames detection ran on
    failed: list[str]  # sampled frames where the chosen face was not detected
    faces: int  # faces the evidence supports (the largest is cropped)

    @property
    def scale(self) -> float:
        """Crop pixels per frame pixel."""
        return self.size / self.side

    def padding(self) -> tuple[int, int, int, int]:
        """Frame pixels of the square outside the frame (left, top, right, bottom): the rows and
        columns the crop fills by repeating the frame's edge (all 0 for a planned crop)."""
        height, width = self.frame_size
        return (
            max(-self.x, 0),
            max(-self.y, 0),
            max(self.x + self.side - width, 0),
            max(self.y + self.side - height, 0),
        )

    def _window(self) -> tuple[slice, slice, slice, slice]:
        """(rows, columns) of the frame inside the square, then the same pixels in the square."""
        left, top, right, bottom = self.padding()
        frame = (slice(self.y + top, self.y + self.side - bottom), slice(self.x + left, self.x + self.side - right))
        square = (slice(top, self.side - bottom), slice(left, self.side - right))
        return *frame, *square

    def _resize(self, image: np.ndarray, side: int) -> np.ndarray:
        shrink = side < image.shape[0]
        return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    def crop(self, rgb: np.ndarray) -> np.ndarray:
        """The square of a frame, edge pixels repeated where it leaves the frame, as `[size, size, 3]`."""
        if rgb.shape[:2] != self.frame_size:
            raise UserError(
                f"frame of {rgb.shape[1]}x{rgb.shape[0]} px in a sequence of {self.frame_size[1]}x{self.frame_size[0]}"
            )
        rows, cols, _, _ = self._window()
        left, top, right, bottom = self.padding()
        pads = (top, bottom, left, right)  # copyMakeBorder's order
        square = cv2.copyMakeBorder(rgb[rows, cols], *pads, cv2.BORDER_REPLICATE) if any(pads) else rgb[rows, cols]
        return np.ascontiguousarray(self._resize(square, self.size))

    def paste_back(self, flow: np.ndarray) -> np.ndarray:
        """A crop's `[size, size, 2]` flow in full-frame coordinates: resized to the square, vectors
        divided by `scale`, NaN outside the square: `[H, W, 2]` float32."""
        square = self._resize(flow.astype(np.float32), self.side) / self.scale
        rows, cols, square_rows, square_cols = self._window()
        full = np.full((*self.frame_size, 2), np.nan, dtype=np.float32)
        full[rows, cols] = square[square_rows, square_cols]
        return full

    def face_in_crop(self) -> tuple[float, float, float, float]:
        """The face box (x, y, w, h) in crop pixels."""
        x, y, w, h = self.face
        s = self.scale
        return (x - self.x) * s, (y - self.y) * s, w * s, h * s

    def record(self) -> dict:
        """What the sequence's JSON says of the crop (names and units: docs/outputs.md, Conventions)."""
        height, width = self.frame_size
        left, top, right, bottom = self.padding()
        return {
            "box_xywh_frame_px": [self.x, self.y, self.side, self.side],
            "crop_px_per_frame_px": self.scale,
            "crop_wh_px": [self.size, self.size],
            "frame_wh_px": [width, height],
            "padding_frame_px": {"left": left, "top": top, "right": right, "bottom": bottom},
            "face_xywh_frame_px": [round(v, 1) for v in self.face],
            "faces": self.faces,
            "detector": self.detector,
            "sampled": self.sampled,
            "failed": self.failed,
        }


def fit_square(centre: tuple[float, float], side: float, frame_size: tuple[int, int]) -> tuple[int, int, int]:
    """(x, y, side) of the square of `side` px centred on `centre` (x, y), shrunk to the frame's
    shorter side and shifted inside the frame (`frame_size`: (H, W)), so that it never leaves it."""
    height, width = frame_size
    side = min(int(round(side)), height, width)
    x = min(max(int(round(centre[0] - side / 2)), 0), width - side)
    y = min(max(int(round(centre[1] - side / 2)), 0), height - side)
    return x, y, side


def plan_crop(frames: Sequence[tuple[str, np.ndarray]], options: FaceCropOptions, what: str) -> FaceCrop:
    """The crop of a sequence from its sampled frames (label, RGB); UserError naming `what` (the
    input) when no sampled frame has a face."""
    per_sample = [options.detector.detect(rgb) for _, rgb in frames]
    return crop_around_face(per_sample, [label for label, _ in frames], frames[0][1].shape[:2], options, what)


def crop_around_face(
    per_sample: Sequence[Sequence[Detection]],
    labels: Sequence[str],
    frame_size: tuple[int, int],
    options: FaceCropOptions,
    what: str,
) -> FaceCrop:
    """The crop from each sampled frame's detections (`labels`: the frames, `frame_size`: (H, W))."""
    chosen = choose_face(per_sample)
    if chosen is None:
        raise UserError(
            f"no face found in {what} ({options.detector.name.split(' ')[0]}, {len(labels)} frames sampled): "
            "run without --face_crop, or try another --face_detector"
        )
    track, faces = chosen
    x, y, w, h = track.union()
    left, top, side = fit_square((x + w / 2, y + h / 2), max(w, h) + 2 * options.margin * track.side(), frame_size)
    return FaceCrop(
        x=left,
        y=top,
        side=side,
        size=options.size,
        frame_size=tuple(frame_size),
        face=(x, y, w, h),
        detector=options.detector.name,
        sampled=list(labels),
        failed=[label for k, label in enumerate(labels) if k not in track.hits],
        faces=faces,
    )
