"""Frame sources of get_flow.py behind one interface (`FrameSource`): an image pair or a folder of
frames (`ImageFiles`), a video (`VideoFrames`), one row of a pair list (`PairRow`); frames are read
one at a time. Problems raise UserError with a one-line message naming the file."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.errors import UserError
from core.utils.flow_io import read_image

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}
# files a corpus (get_flow.py --corpus) takes for videos; any other format still works with --video
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}


def natural_key(path: Path) -> list:
    """Sort key that puts frame2 before frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def read_rgb(path: Path, role: str) -> np.ndarray:
    if path.is_dir():
        hint = " (use --frames for a folder of frames)" if role.startswith("image") else ""
        raise UserError(f"{role} {path} is a directory, not an image file{hint}")
    if not path.is_file():
        raise UserError(f"{role} {path} not found")
    try:
        return read_image(path)
    except (ValueError, OSError) as error:
        raise UserError(f"cannot read {role} {path}: {str(error).splitlines()[0]}") from None


@dataclass
class Frame:
    name: str  # this frame's part of a pair's output name
    label: str  # for messages (file name, or video + index)
    rgb: np.ndarray
    source: str = ""  # where it comes from, symlinks resolved (file, or video + index)


def folder_prefix(folder: Path, depth: int) -> str:
    """The last `depth` folder names of `folder` (resolved) joined by `_` ("root" for none)."""
    parts = folder.resolve().parts[1:]
    return "_".join(parts[len(parts) - depth :]) if parts else "root"


def frame_tokens(paths: list[Path]) -> list[str]:
    """Per file: its stem, or `<stem>_<extension>` where two files of one folder share a
    stem (0001.jpg, 0001.png)."""

    def key(path: Path) -> tuple[Path, str]:
        return path.parent, path.stem.casefold()

    shared = Counter(map(key, paths))
    return [f"{path.stem}_{path.suffix.lstrip('.')}" if shared[key(path)] > 1 else path.stem for path in paths]


def video_frame(path: Path, index: int, rgb: np.ndarray | None = None) -> Frame:
    """Frame `index` (0-based) of a video."""
    return Frame(f"{path.stem}_{index:06d}", f"{path} frame {index}", rgb, f"{path.resolve()} frame {index}")


class FrameSource(ABC):
    """A sequence of frames that extraction estimates flow on, pair by pair (`core.extract` uses
    nothing else of a source)."""

    paths: list[Path]  # the input files
    pairs: int | None  # pairs an iteration gives (None: a video whose container announces no frame count)
    fps: float | None  # frame rate of the flow video (None: the source writes none)
    depth: int  # folders of the input in the output names (raised until no name is another input's)
    max_depth: int

    @abstractmethod
    def __iter__(self) -> Iterator[Frame]:
        """The frames, decoded one at a time."""

    @abstractmethod
    def planned(self) -> Iterator[tuple[Frame, Frame]]:
        """The pairs an iteration gives, without decoding a frame."""

    @abstractmethod
    def pair_name(self, first: Frame, second: Frame) -> str:
        """The output name of the pair (`first`, `second`)."""

    @abstractmethod
    def sequence_name(self) -> str:
        """The name of the sequence's own files."""

    @abstractmethod
    def label(self) -> str:
        """The input in messages."""

    def output_stem(self) -> str | None:
        """The name of the flow video, without `_flow.mp4` (None: the source writes no video)."""
        return None

    def shows_progress(self) -> bool:
        """Whether a bar over the pairs tells anything (not for a single pair)."""
        return False

    def resolved_inputs(self) -> list[str]:
        """The inputs, symlinks resolved (a face crop's JSON records them)."""
        return [str(path.resolve()) for path in self.paths]

    def frame_count(self) -> int:
        """Frames an iteration gives (decoded to count them where the source does not know)."""
        return self.pairs + 1 if self.pairs is not None else sum(1 for _ in self)

    def sample(self, positions: Sequence[int]) -> list[Frame]:
        """The frames at `positions` (0-based, sorted), decoded: here by decoding the sequence once."""
        wanted = set(positions)
        return [frame for k, frame in enumerate(self) if k in wanted]

    def shortfall(self) -> str | None:
        """One line when the last iteration gave fewer frames than the input announces."""
        return None

    def no_pair_reason(self) -> str:
        """One line for an iteration that gave no pair."""
        return "no pair to process: the input has fewer than 2 frames"


class ImageFiles(FrameSource):
    """Frames from a list of image files (a pair, or a sorted folder), read lazily unless given decoded."""

    def __init__(self, paths: list[Path], role: str = "frame", decoded: list[np.ndarray] | None = None) -> None:
        self.paths = paths
        self.role = role
        self.decoded = decoded  # images already read (and checked), in `paths` order
        self.pairs = len(paths) - 1
        self.fps = None
        self.depth = 1  # folders of the first file in the pair names (more tell inputs apart across runs)
        self.max_depth = max(len(paths[0].resolve().parent.parts) - 1, 1)
        self.tokens = frame_tokens(paths)

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self.paths)):
            yield self.read(i)

    def read(self, i: int) -> Frame:
        """The `i`-th frame, decoded."""
        role = f"image{i + 1}" if self.role == "pair" else self.role
        return self.frame(i, self.decoded[i] if self.decoded else read_rgb(self.paths[i], role))

    def frame(self, i: int, rgb: np.ndarray | None = None) -> Frame:
        return Frame(self.tokens[i], str(self.paths[i]), rgb, str(self.paths[i].resolve()))

    def sample(self, positions: Sequence[int]) -> list[Frame]:
        """The frames at `positions`, each file read alone."""
        return [self.read(i) for i in positions]

    def planned(self) -> Iterator[tuple[Frame, Frame]]:
        """The pairs an iteration gives, without reading a frame."""
        for i in range(self.pairs):
            yield self.frame(i), self.frame(i + 1)

    def pair_name(self, first: Frame, second: Frame) -> str:
        return f"{folder_prefix(self.paths[0].parent, self.depth)}_{first.name}-{second.name}"

    def sequence_name(self) -> str:
        """The name of the sequence's own files: the pair's name, or the folder's."""
        if self.role == "pair":
            return self.pair_name(self.frame(0), self.frame(1))
        return folder_prefix(self.paths[0].parent, self.depth)

    def label(self) -> str:
        """The frames folder, or the pair's files."""
        if self.role != "pair":
            return f"frames folder {self.paths[0].parent}"
        return " / ".join(map(str, self.paths))

    def shows_progress(self) -> bool:
        return self.role != "pair"


class VideoFrames(FrameSource):
    """Frames decoded one at a time from a video file (every `stride`-th, at most `max_frames`).

    After iterating, `shortfall()` says whether fewer frames were decoded than the
    container announces (CAP_PROP_FRAME_COUNT, where it gives one).
    """

    def __init__(self, path: Path, stride: int, max_frames: int | None) -> None:
        if path.is_dir():
            raise UserError(f"video {path} is a directory, not a video file")
        if not path.is_file():
            raise UserError(f"video {path} not found")
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise UserError(f"cannot open video {path} (not a video OpenCV can decode)")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = capture.get(cv2.CAP_PROP_FPS)
        readable, _ = capture.read()
        capture.release()
        if not readable:
            raise UserError(f"cannot open video {path} (OpenCV decodes no frame from it)")
        self.path, self.stride, self.max_frames = path, stride, max_frames
        self.paths = [path]  # the input files
        self.announced = max(count, 0)  # frames in the container (0: unknown)
        expected = -(-count // stride) if count > 0 else 0
        if max_frames is not None:
            expected = min(expected, max_frames)
        self.expected = expected if count > 0 else None  # frames the options select from them
        self.pairs = max(expected - 1, 0) if count > 0 else None
        self.fps = fps / stride if fps and fps > 0 else 25.0 / stride
        self.video_name = path.stem
        self.depth = 0  # folders of the video in the output names (more tell inputs apart across runs)
        self.max_depth = len(path.resolve().parent.parts) - 1
        self.used = 0  # frames yielded by the last iteration
        self.failed_at: int | None = None  # index of the frame it could not decode

    def __iter__(self) -> Iterator[Frame]:
        capture = cv2.VideoCapture(str(self.path))
        self.used, self.failed_at = 0, None
        try:
            index = 0
            while self.max_frames is None or self.used < self.max_frames:
                if index % self.stride:
                    if not capture.grab():
                        self.failed_at = index
                        break
                    index += 1
                    continue
                ok, bgr = capture.read()
                if not ok:
                    self.failed_at = index
                    break
                yield self.frame(index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                index += 1
                self.used += 1
        finally:
            capture.release()

    def frame(self, index: int, rgb: np.ndarray | None = None) -> Frame:
        return video_frame(self.path, index, rgb)

    def planned(self) -> Iterator[tuple[Frame, Frame]]:
        """The pairs an iteration gives if the video decodes as its container announces
        (the first pair where it announces no frame count), without decoding a frame."""
        indices = range(0, (self.expected if self.expected is not None else 2) * self.stride, self.stride)
        for first, second in zip(indices, indices[1:]):
            yield self.frame(first), self.frame(second)

    def pair_name(self, first: Frame, second: Frame) -> str:
        return f"{folder_prefix(self.path.parent, self.depth)}_{first.name}" if self.depth else first.name

    def output_stem(self) -> str:
        """The name of the output video, without `_flow.mp4`."""
        return f"{folder_prefix(self.path.parent, self.depth)}_{self.video_name}" if self.depth else self.video_name

    def sequence_name(self) -> str:
        return self.output_stem()

    def label(self) -> str:
        return str(self.path)

    def shows_progress(self) -> bool:
        return True

    def shortfall(self) -> str | None:
        """One line when the last iteration decoded fewer frames than the container announces."""
        if self.expected is None or self.failed_at is None or self.used >= self.expected:
            return None
        options = (("--stride", self.stride if self.stride > 1 else None), ("--max_frames", self.max_frames))
        selection = " ".join(f"{flag} {value}" for flag, value in options if value)
        wanted = f"{self.expected}" + (f" ({selection})" if selection else "")
        return (
            f"video {self.path}: decoding failed at frame {self.failed_at} of the {self.announced} frames its "
            f"container announces (truncated or damaged file?): used {self.used} frames instead of {wanted}, "
            f"{max(self.used - 1, 0)} pairs instead of {self.expected - 1}"
        )

    def no_pair_reason(self) -> str:
        return self.shortfall() or f"video {self.path}: OpenCV decodes fewer than 2 frames from it (is it a video?)"


class PairRow(FrameSource):
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

    def sequence_name(self) -> str:
        return self.name

    def label(self) -> str:
        return self.where

    def resolved_inputs(self) -> list[str]:
        """The two files, or the video's two frames."""
        return [frame.source for frame in next(self.planned())]


def decode_frames(path: Path, indices: set[int]) -> dict[int, np.ndarray]:
    """The RGB frames of a video at `indices` (0-based), decoded in order up to the last; those it
    cannot decode are missing from the answer."""
    capture = cv2.VideoCapture(str(path))
    found: dict[int, np.ndarray] = {}
    try:
        for index in range(max(indices) + 1):
            if not capture.grab():
                break
            if index in indices:
                ok, bgr = capture.retrieve()
                if ok:
                    found[index] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()
    return found


def video_frame_count(path: Path) -> int:
    """Frames a video's container announces (0: unknown); UserError naming it when OpenCV cannot open it."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise UserError(f"cannot open video {path} (not a video OpenCV can decode)")
        return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    finally:
        capture.release()


def folder_frames(folder: Path, *, stride: int = 1, max_frames: int | None = None) -> ImageFiles:
    """Every `stride`-th image of `folder` in natural order (frame2 before frame10), at most `max_frames`."""
    if folder.is_file():
        raise UserError(f"frames folder {folder} is a file, not a folder (use --video for a video file)")
    if not folder.is_dir():
        raise UserError(f"frames folder {folder} not found")
    paths = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS), key=natural_key
    )[::stride]
    if max_frames is not None:
        paths = paths[:max_frames]
    if len(paths) < 2:
        raise UserError(
            f"frames folder {folder} has {len(paths)} usable image(s) "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}); a pair needs at least 2"
        )
    return ImageFiles(paths)


def check_same_size(label1: str, rgb1: np.ndarray, label2: str, rgb2: np.ndarray) -> None:
    if rgb1.shape != rgb2.shape:
        raise UserError(
            f"{label1} ({rgb1.shape[1]}x{rgb1.shape[0]} px) and {label2} ({rgb2.shape[1]}x{rgb2.shape[0]} px) "
            "differ in size; both images of a pair must have the same size"
        )
