"""The frame source a command line asks for: an image pair, a folder of frames, a video, or one row of a pair list."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Union

from core.errors import UserError
from core.utils.frames import (
    Frame,
    ImageFiles,
    VideoFrames,
    check_same_size,
    decode_frames,
    folder_frames,
    read_rgb,
    video_frame,
)

REPO = Path(__file__).resolve().parents[2]
DEMO_PAIR = (REPO / "assets" / "demo" / "frame1.jpg", REPO / "assets" / "demo" / "frame2.jpg")


class PairRow:
    """One row of a pair list (`--pairs`): two image files, or two frames of a video, named by the row.

    `where` names the row in messages (`pairs.csv line 3`)."""

    def __init__(
        self,
        name: str,
        where: str,
        *,
        images: list[Path] | None = None,
        video: Path | None = None,
        indices: tuple[int, int] = (0, 1),
    ) -> None:
        self.name, self.where = name, where
        self.video, self.indices = video, indices
        self.paths = [video] if video is not None else list(images)
        self.pairs = 1
        self.fps = None
        self.video_name = None
        self.depth = self.max_depth = 0  # the row's name is the pair's name

    def frame(self, k: int, rgb=None) -> Frame:
        if self.video is not None:
            return video_frame(self.video, self.indices[k], rgb)
        path = self.paths[k]
        return Frame(path.stem, str(path), rgb, str(path.resolve()))

    def __iter__(self) -> Iterator[Frame]:
        if self.video is None:
            for k, path in enumerate(self.paths):
                yield self.frame(k, read_rgb(path, f"{self.where}: image{k + 1}"))
            return
        decoded = decode_frames(self.video, set(self.indices))
        for k, index in enumerate(self.indices):
            if index not in decoded:
                raise UserError(f"{self.where}: video {self.video} decodes no frame {index} (truncated or damaged?)")
            yield self.frame(k, decoded[index])

    def planned(self) -> Iterator[tuple[Frame, Frame]]:
        yield self.frame(0), self.frame(1)

    def pair_name(self, first: Frame, second: Frame) -> str:
        return self.name

    def output_stem(self) -> str | None:
        return None

    def sequence_name(self) -> str:
        return self.name


FrameSource = Union[ImageFiles, VideoFrames, PairRow]


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
