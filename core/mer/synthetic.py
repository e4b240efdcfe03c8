"""A synthetic micro-expression corpus with exact ground truth, in the canonical CSV's layout.

Built on `core.synthetic`'s renderer (procedural face textures, a head homography and a contractive
expression field, rendered by inverse mapping with exact flow). Each subject has its own face texture,
face layout and background; each clip has its own head motion and one expression of three classes,
two mirrored bumps of skin motion at the class's place on the face, with per-clip jitter:

- "negative": brow lowering (AU4): the inner brows move down and toward the midline;
- "positive": lip-corner pull (AU12): the mouth corners move outward and up;
- "surprise": brow raise (AU1+2): the brows move up.

The expression peaks at 0.5-2 px at the apex (`EXPRESSION_PX`). The head moves more (the nuisance):
a translation, an in-plane rotation, a zoom and a slight out-of-plane tilt (a perspective change),
each scaled by `head_motion`. Translation and rotation leave no strain inside the face, but they move
the head against the static background (a strain edge at its outline); zoom and tilt leave strain
everywhere; all of them dominate u and v. So a classifier on the facial flow sees mostly the head,
on the expression flow (facial minus head) only the expression.

Frames are face crops (the face fills the frame; the CSV says `cropped`), PNG, numbered from a random
onset: onset, in-between, apex, offset at motion times 0, 0.5, 1, 1.5 (`FRAME_TIMES`; both motions
ramp as sin(pi t / 2), full at the apex). Layout under `root`:

    synthetic.csv                      dataset,subject,clip,frames,onset,apex,label,offset,cropped
    {subject}/{clip}/img{N}.png        the frames
    {subject}/{clip}.{kind}.npy        onset->apex flow [H, W, 2] float32 in onset-frame pixels,
                                       kind facial, head or expression (`ground_truth_file`)
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from core.errors import UserError
from core.mer.clips import CANONICAL_COLUMNS, Clip
from core.synthetic.motion import ExpressionField, HeadMotion, Oscillation
from core.synthetic.sequence import SyntheticSubject
from core.synthetic.texture import Array, FaceLayout, make_background, make_face_texture
from core.utils import flow_io
from core.utils.atomic import atomic_path, write_text_atomic
from core.utils.progress import progress_bar

DATASET = "synthetic"
CLASSES = ("negative", "positive", "surprise")  # the labels; the megc2019 protocol maps them to themselves
GROUND_TRUTH_KINDS = ("facial", "head", "expression")
CORPUS_CSV = "synthetic.csv"
FRAME_SIZE = 128  # default frame side (px): DecFlow runs on 128x128
MIN_FRAME_SIZE = 96  # below it the 2.4 px bumps of 0.2-face-height radius are no longer contractive
HEAD_MOTION = 1.0  # default strength of the head motion (a multiplier of the ranges below)

FRAME_TIMES = (0.0, 0.5, 1.0, 1.5)  # motion time of the written frames: onset, in-between, apex, offset
FRAME_STEP = 0.5  # motion time between consecutive written frames
APEX = 2  # index of the apex in FRAME_TIMES
ONSET_NUMBERS = (1, 300)  # the onset's frame number is drawn in [low, high)

FACE_HALF_WIDTH = (0.32, 0.36)  # face half-width / frame side: the face fills the frame like a face crop
CENTRE_JITTER = 0.03  # face centre offset from the frame centre, fraction of the side
ROLL = 0.05  # head roll at the onset, radians, in [-ROLL, ROLL]

EXPRESSION_PX = (0.5, 2.0)  # peak skin motion at the apex, px
SIDE_BALANCE = (0.8, 1.2)  # each side's amplitude factor
LOCATION_JITTER = 0.06  # each bump's centre offset, fraction of the face half-width
DIRECTION_JITTER = 0.25  # each bump's direction offset, radians

HEAD_SHIFT_PX = (2.5, 4.5)  # head translation at the apex, px (times head_motion): above the 2.4 px peak
HEAD_ROTATION = (0.02, 0.05)  # in-plane rotation at the apex, radians, either sign
HEAD_ZOOM = (0.02, 0.05)  # log-scale change at the apex, either sign
HEAD_TILT = (0.01, 0.03)  # perspective change at the apex: relative scale change one face half-width off-centre

BACKGROUND_MARGIN = 8  # canvas pixels beyond the frame (the background is static)
PNG_COMPRESSION = 1  # fast PNG writing (the benchmark writes 442 clips)


@dataclass(frozen=True)
class Action:
    """One class's facial action, drawn on both sides of the face: where, how wide, which way."""

    anchor: str  # "brow" or "mouth"
    inward: float  # centre shift toward the midline, in eye widths
    radii: tuple[float, float]  # bump radii in face half-widths (x) and half-heights (y)
    direction: tuple[float, float]  # forward skin motion on the right half (x > 0); mirrored on the left


ACTIONS = {
    "negative": Action(anchor="brow", inward=0.3, radii=(0.3, 0.2), direction=(-0.5, 1.0)),
    "positive": Action(anchor="mouth", inward=0.0, radii=(0.3, 0.22), direction=(0.8, -0.6)),
    "surprise": Action(anchor="brow", inward=0.0, radii=(0.4, 0.2), direction=(0.0, -1.0)),
}


@dataclass(frozen=True)
class Face:
    """A subject: face layout, texture and background, shared by all its clips."""

    layout: FaceLayout
    subject: SyntheticSubject  # with no motion and no expression yet; each clip replaces them


@dataclass
class RenderedClip:
    """One clip's frames (uint8 RGB [H, W, 3], at FRAME_TIMES) and its onset->apex flows by kind."""

    frames: list[Array]
    flows: dict[str, Array]  # kind -> [H, W, 2] float32


def _ramp(value: float) -> Oscillation:
    """value * sin(pi t / 2): 0 at the onset, `value` at the apex (t = 1)."""
    return Oscillation(amplitude=float(value), omega=np.pi / 2, phase=0.0)


def _signed(rng: np.random.Generator, bounds: tuple[float, float], strength: float) -> float:
    return float(rng.choice((-1.0, 1.0)) * rng.uniform(*bounds) * strength)


def make_face(size: int, rng: np.random.Generator) -> Face:
    """Draw a subject (its face layout, texture and background) from `rng`."""
    layout = FaceLayout.random(rng, a=size * rng.uniform(*FACE_HALF_WIDTH))
    texture = make_face_texture(rng, layout)
    side = size + 2 * BACKGROUND_MARGIN
    canvas = make_background(rng, (side, side), (side / 2, side / 2), layout.a)
    still = _ramp(0.0)
    motion = HeadMotion((size / 2, size / 2), 0.0, still, still, still, still, still, still)
    empty = ExpressionField(np.zeros((0, 2)), np.ones((0, 2)), np.zeros((0, 2)), ())
    subject = SyntheticSubject(
        size=(size, size),
        texture=texture,
        expression=empty,
        motion=motion,
        canvas=canvas,
        margin=BACKGROUND_MARGIN,
        bg_x=still,
        bg_y=still,
        frame_interval=FRAME_STEP,
    )
    return Face(layout=layout, subject=subject)


def make_expression(rng: np.random.Generator, layout: FaceLayout, label: str) -> ExpressionField:
    """The class's action on both sides with jitter, as a backward field (minus the skin motion)."""
    action = ACTIONS[label]
    amplitude = rng.uniform(*EXPRESSION_PX)
    centres, radii, vectors = [], [], []
    for side in (-1.0, 1.0):
        if action.anchor == "brow":
            anchor = (side * (layout.eye_x - action.inward * layout.eye_w), layout.brow_y)
        else:
            anchor = (side * (layout.mouth_w - action.inward * layout.eye_w), layout.mouth_y)
        centres.append(np.add(anchor, rng.uniform(-1, 1, 2) * LOCATION_JITTER * layout.a))
        radii.append((action.radii[0] * layout.a, action.radii[1] * layout.b))
        angle = np.arctan2(action.direction[1], side * action.direction[0]) + rng.uniform(-1, 1) * DIRECTION_JITTER
        length = amplitude * rng.uniform(*SIDE_BALANCE)
        vectors.append((-length * np.cos(angle), -length * np.sin(angle)))
    return ExpressionField(np.array(centres), np.array(radii), np.array(vectors), (_ramp(1.0), _ramp(1.0)))


def make_head_motion(rng: np.random.Generator, size: int, layout: FaceLayout, strength: float) -> HeadMotion:
    """The clip's head pose at the onset (centre, roll) and its motion to the apex, scaled by `strength`."""
    centre = size / 2 + rng.uniform(-1, 1, 2) * CENTRE_JITTER * size
    heading = rng.uniform(0, 2 * np.pi)
    shift = rng.uniform(*HEAD_SHIFT_PX) * strength
    return HeadMotion(
        centre=(float(centre[0]), float(centre[1])),
        angle0=float(rng.uniform(-ROLL, ROLL)),
        angle=_ramp(_signed(rng, HEAD_ROTATION, strength)),
        tx=_ramp(shift * np.cos(heading)),
        ty=_ramp(shift * np.sin(heading)),
        log_scale=_ramp(_signed(rng, HEAD_ZOOM, strength)),
        persp_x=_ramp(_signed(rng, HEAD_TILT, strength) / layout.a),
        persp_y=_ramp(_signed(rng, HEAD_TILT, strength) / layout.a),
    )


def render_clip(face: Face, label: str, *, head_motion: float, rng: np.random.Generator) -> RenderedClip:
    """One clip of `face` with an expression of class `label` drawn from `rng`: frames and exact onset->apex flows."""
    expression = make_expression(rng, face.layout, label)
    motion = make_head_motion(rng, face.subject.size[0], face.layout, head_motion)
    subject = replace(face.subject, expression=expression, motion=motion)
    onset, head_coverage, _ = subject.render(0)
    frames = [onset] + [subject.render(index)[0] for index in range(1, len(FRAME_TIMES))]
    # with frame_interval = the apex's time, "frame 1" is the apex: flows(0) is onset->apex
    facial, head = replace(subject, frame_interval=FRAME_TIMES[APEX]).flows(0, on_head=head_coverage >= 0.5)
    return RenderedClip(frames=frames, flows={"facial": facial, "head": head, "expression": facial - head})


def ground_truth_file(clip: Clip, kind: str) -> Path:
    """The onset->apex flow `[H, W, 2]` float32 `.npy` of a synthetic clip: kind facial, head or expression."""
    if kind not in GROUND_TRUTH_KINDS:
        raise UserError(f"ground-truth flow kind {kind!r} is not one of {', '.join(GROUND_TRUTH_KINDS)}")
    return clip.frames.parent / f"{clip.frames.name}.{kind}.npy"


def clip_counts(total: int, subjects: int) -> list[int]:
    """`total` clips spread over `subjects` as evenly as possible (the first ones get one more):
    e.g. the MEGC 2019 composite's 442 clips over 68 subjects."""
    if total < subjects or subjects < 1:
        raise UserError(f"cannot spread {total} clips over {subjects} subjects with at least one each")
    return [total // subjects + (j < total % subjects) for j in range(subjects)]


def _write_clip(clip: Clip, rendered: RenderedClip) -> None:
    clip.frames.mkdir(parents=True)
    for index, image in enumerate(rendered.frames):
        path = clip.frames / f"img{clip.onset + index}.png"
        with atomic_path(path) as tmp:
            if not cv2.imwrite(str(tmp), image[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]):
                raise OSError(f"could not write {path}")
    for kind, flow in rendered.flows.items():
        flow_io.write_npy(ground_truth_file(clip, kind), flow)


def _csv_text(root: Path, clips: Sequence[Clip]) -> str:
    """The canonical CSV (frames relative to `root`, its folder), with the offset and `cropped` columns."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([*CANONICAL_COLUMNS, "offset", "cropped"])
    for clip in clips:
        frames = clip.frames.relative_to(root).as_posix()
        row = [clip.dataset, clip.subject, clip.clip, frames, clip.onset, clip.apex, clip.label, clip.offset]
        writer.writerow([*row, "true"])
    return text.getvalue()


def _counts(subjects: int, clips_per_subject: int | Sequence[int]) -> list[int]:
    if subjects < 1:
        raise UserError(f"a synthetic corpus needs at least one subject, got {subjects}")
    counts = [clips_per_subject] * subjects if isinstance(clips_per_subject, int) else list(clips_per_subject)
    if len(counts) != subjects or min(counts) < 1:
        raise UserError(f"clips per subject: need {subjects} counts of at least 1, got {clips_per_subject}")
    return counts


def write_synthetic_corpus(
    root: Path,
    *,
    subjects: int,
    clips_per_subject: int | Sequence[int],
    size: int = FRAME_SIZE,
    head_motion: float = HEAD_MOTION,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Write a synthetic corpus into the empty (or new) folder `root`; return its canonical CSV.

    `clips_per_subject`: one count for every subject, or one per subject (`clip_counts`). Each subject's
    labels cycle through CLASSES from a random start, so the classes are balanced within a subject.
    Subject `j` depends on (seed, j) alone, its clip `k` on (seed, j, k) and `head_motion`.
    """
    counts = _counts(subjects, clips_per_subject)
    if size < MIN_FRAME_SIZE:
        raise UserError(f"synthetic frames must be at least {MIN_FRAME_SIZE}x{MIN_FRAME_SIZE}, got {size}")
    if not head_motion >= 0:
        raise UserError(f"head_motion must be at least 0, got {head_motion}")
    if seed < 0:
        raise UserError(f"the seed must be at least 0, got {seed}")
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UserError(f"{root} is not an empty folder: the synthetic corpus is written into a new one")
    root.mkdir(parents=True, exist_ok=True)
    digits = max(2, len(str(max(subjects, *counts))))
    clips = []
    with progress_bar(total=sum(counts), desc="synthetic MER corpus", unit="clip", disable=not progress) as bar:
        for j, count in enumerate(counts):
            subject_rng = np.random.default_rng((seed, j))
            start = int(subject_rng.integers(len(CLASSES)))
            face = make_face(size, subject_rng)
            subject = f"s{j + 1:0{digits}d}"
            for k in range(count):
                rng = np.random.default_rng((seed, j, k))
                onset = int(rng.integers(*ONSET_NUMBERS))
                name = f"clip{k + 1:0{digits}d}"
                label = CLASSES[(start + k) % len(CLASSES)]
                clip = Clip(
                    DATASET,
                    subject,
                    name,
                    root / subject / name,
                    onset,
                    onset + APEX,
                    label,
                    offset=onset + len(FRAME_TIMES) - 1,
                )
                _write_clip(clip, render_clip(face, label, head_motion=head_motion, rng=rng))
                clips.append(clip)
                bar.update()
    path = root / CORPUS_CSV
    write_text_atomic(path, _csv_text(root, clips))
    return path
