"""The face crop of a sequence (`--face_crop`): its frames sampled, the crop planned once
(`core.face.crop`), every frame cropped the same way, and what the sequence's JSON records."""

from __future__ import annotations

from collections.abc import Iterator

from core.extract.sources import FrameSource, PairRow
from core.face.crop import FaceCrop, FaceCropOptions, plan_crop, sample_positions
from core.utils.frames import Frame, ImageFiles, check_same_size


def input_label(source: FrameSource) -> str:
    """The input in messages: the pair list's row, the frames folder, or the files."""
    if isinstance(source, PairRow):
        return source.where
    if isinstance(source, ImageFiles) and source.role != "pair":
        return f"frames folder {source.paths[0].parent}"
    return " / ".join(map(str, source.paths))


def sample_frames(source: FrameSource, samples: int) -> list[Frame]:
    """`samples` evenly spaced frames of the source (first and last included), decoded. Image files
    are read one by one; a video is decoded once (twice when its container gives no frame count)."""
    if isinstance(source, ImageFiles):
        return [source.read(i) for i in sample_positions(len(source.paths), samples)]
    count = source.pairs + 1 if source.pairs is not None else sum(1 for _ in source)
    wanted = set(sample_positions(count, samples))
    return [frame for k, frame in enumerate(source) if k in wanted]


def face_crop(source: FrameSource, options: FaceCropOptions) -> tuple[FaceCrop, Frame]:
    """The sequence's crop, and the first sampled frame (for the picture); UserError naming the
    input when no sampled frame has a face."""
    frames = sample_frames(source, options.samples)
    for frame in frames[1:]:
        check_same_size(frames[0].label, frames[0].rgb, frame.label, frame.rgb)
    crop = plan_crop([(f.label, f.rgb) for f in frames], options, input_label(source))
    return crop, frames[0]


def crop_frames(frames: Iterator[Frame], crop: FaceCrop) -> Iterator[Frame]:
    """The frames, each cropped to the sequence's one square and resized."""
    for frame in frames:
        yield Frame(frame.name, frame.label, crop.crop(frame.rgb), frame.source)


def face_record(source: FrameSource, crop: FaceCrop, options: FaceCropOptions) -> dict:
    """The sequence's `<sequence>_face.json`: the input, the crop (`FaceCrop.record`: the square in
    frame pixels, the scale, the padding, the detector, the sampled frames where detection failed)
    and the margin, in face sides."""
    inputs = [str(path.resolve()) for path in source.paths]
    if isinstance(source, PairRow) and source.video is not None:
        inputs = [f"{inputs[0]} frame {index}" for index in source.indices]
    return {"sequence": source.sequence_name(), "input": inputs, **crop.record(), "margin_face_sides": options.margin}


def face_note(crop: FaceCrop, source: FrameSource) -> str | None:
    """One line when the evidence supports several faces (the largest is cropped), when the
    detection failed in some sampled frames, or when the face's detections span more than the
    square (it is never larger than the frame's shorter side)."""
    notes = []
    if crop.faces > 1:
        notes.append(f"{crop.faces} faces found, cropping the largest")
    if crop.failed:
        notes.append(f"no face detected in {len(crop.failed)} of {len(crop.sampled)} sampled frames")
    _, _, width, height = crop.face
    if max(width, height) > crop.side:
        notes.append(
            f"the face's detections span {width:.0f}x{height:.0f} px, more than the frame's shorter side: "
            f"the {crop.side}x{crop.side} px square holds part of them"
        )
    return f"{input_label(source)}: {'; '.join(notes)}" if notes else None
