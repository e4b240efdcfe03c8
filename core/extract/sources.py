"""The frame source (`core.utils.frames`) a command line asks for: an image pair, a folder of frames or a video
(the rows of a pair list: `core.extract.pairs`)."""

from __future__ import annotations

from pathlib import Path

from core.errors import UserError
from core.utils.frames import FrameSource, ImageFiles, VideoFrames, check_same_size, folder_frames, read_rgb

REPO = Path(__file__).resolve().parents[2]
DEMO_PAIR = (REPO / "assets" / "demo" / "frame1.jpg", REPO / "assets" / "demo" / "frame2.jpg")


def check_selection(*, stride: int, max_frames: int | None) -> None:
    """UserError naming `--stride` or `--max_frames` when they select no pair."""
    if stride < 1:
        raise UserError(f"--stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 2:
        raise UserError(f"--max_frames must be >= 2 (a pair needs two frames), got {max_frames}")


def open_source(
    *,
    image1: str | None = None,
    image2: str | None = None,
    frames: str | None = None,
    video: str | None = None,
    stride: int = 1,
    max_frames: int | None = None,
) -> FrameSource:
    """The one source given (the demo pair when none is); UserError naming the option or file
    when the options make no sense. A pair is read and size-checked here, before any model loads."""
    chosen = [
        name
        for name, value in (("--image1/--image2", image1 or image2), ("--frames", frames), ("--video", video))
        if value
    ]
    if len(chosen) > 1:
        raise UserError(f"give only one input: {' and '.join(chosen)} were both given")
    check_selection(stride=stride, max_frames=max_frames)
    if video:
        source = VideoFrames(Path(video), stride, max_frames)
        if source.pairs == 0:
            raise UserError(f"video {video} has fewer than 2 usable frames")
        return source
    if frames:
        return folder_frames(Path(frames), stride=stride, max_frames=max_frames)
    if bool(image1) != bool(image2):
        raise UserError("--image1 and --image2 go together: give both")
    paths = [Path(image1), Path(image2)] if image1 else list(DEMO_PAIR)
    if not image1 and not all(p.is_file() for p in paths):
        raise UserError(f"demo pair {paths[0]} / {paths[1]} missing: pass --image1/--image2, --frames or --video")
    first, second = (read_rgb(path, role) for path, role in zip(paths, ("image1", "image2")))
    check_same_size(str(paths[0]), first, str(paths[1]), second)
    return ImageFiles(paths, role="pair", decoded=[first, second])
