"""The face crop of a sequence (`--face_crop`): its frames sampled, the crop planned once
(`core.face.crop`), every frame cropped the same way, and what the sequence's JSON records."""

from __future__ import annotations

from collections.abc import Iterator

from core.face.crop import FaceCrop, FaceCropOptions, plan_crop, sample_positions
from core.utils.frames import Frame, FrameSource, check_same_size


def sample_frames(source: FrameSource, samples: int) -> list[Frame]:
    """`samples` evenly spaced frames of the source (first and last included), decoded. Image files
    are read one by one; a video is decoded once (twice when its container gives no frame count)."""
    return source.sample(sample_positions(source.frame_count(), samples))


def face_crop(source: FrameSource, options: FaceCropOptions) -> tuple[FaceCrop, Frame]:
    """The sequence's crop, and the first sampled frame (for the picture); UserError naming the
    input when no sampled frame has a face."""
    frames = sample_frames(source, options.samples)
    for frame in frames[1:]:
        check_same_size(frames[0].label, frames[0].rgb, frame.label, frame.rgb)
    crop = plan_crop([(f.label, f.rgb) for f in frames], options, source.label())
    return crop, frames[0]


def crop_frames(frames: Iterator[Frame], crop: FaceCrop) -> Iterator[Frame]:
    """The frames, each cropped to the sequence's one square and resized."""
    for frame in frames:
        yield Frame(frame.name, frame.label, crop.crop(frame.rgb), frame.source)


def face_record(source: FrameSource, crop: FaceCrop, options: FaceCropOptions) -> dict:
    """The sequence's `<sequence>_face.json`: the input, the crop (`FaceCrop.record`: the square in
    frame pixels, the scale, the padding, the detector, the sampled frames where detection failed)
    and the margin, in face sides."""
    return {
        "sequence": source.sequence_name(),
        "input": source.resolved_inputs(),
        **crop.record(),
        "margin_face_sides": options.margin,
    }


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
    return f"{source.label()}: {'; '.join(notes)}" if notes else None
