"""The files of a sequence in `--output`: their names, what happens to files already there, and writing them.

Every pair of frames gives `<name>_flow.png` (the visualisation, which records its input pair
in a PNG text entry) and, with a flow format, `<name>_{facial,head,expression}<ext>`; a video
gives `<stem>_flow.mp4` too. Names are never used twice in one run, and never one that an
earlier run gave another input: the names take as many parent folders as tell the inputs apart.

Files already in `--output`:
- those of an earlier run on the same input (the visualisation records this pair) are replaced,
  with one line saying so: a rerun just works;
- any other file in the way (no record of its input) is replaced only with `overwrite`;
- an input is never an output.
Every file is written to a temporary file in `--output` and renamed into place
(`core.utils.atomic`): a symbolic link in the way is replaced, its target never written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from core.cli import check_none_is_an_input
from core.extract.flows import FLOW_KINDS, PairFlow
from core.extract.sources import FrameSource
from core.utils.atomic import atomic_path
from core.utils.flow_viz import read_png_text, render_flow_panels, write_png
from core.utils.frame_utils import write_flo, write_kitti_flow, write_npy, write_pfm
from core.utils.frames import Frame

# --save_format: (file extension, writer of a [H, W, 2] float32 flow)
SAVE_FORMATS = {
    "flo": (".flo", write_flo),
    "pfm": (".pfm", write_pfm),
    "kitti": (".png", write_kitti_flow),
    "npy": (".npy", write_npy),
}
SOURCE_KEY = "DecFlow input"  # PNG text entry of a visualisation: the pair it shows
VIDEO_CODEC = "mp4v"


class OutputNames:
    """Pair names of one run, never the same twice (case-insensitively): a repeat gets `_2`, `_3`, ..."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def unique(self, name: str) -> str:
        candidate, n = name, 1
        while candidate.casefold() in self.used:
            n += 1
            candidate = f"{name}_{n}"
        self.used.add(candidate.casefold())
        return candidate


def pair_origin(first: Frame, second: Frame) -> str:
    """What a visualisation records of its input pair (symlinks resolved)."""
    return f"{first.source} -> {second.source}"


def pair_files(output: Path, name: str, extension: str | None) -> list[Path]:
    """The visualisation, then the three flow files (with a flow format)."""
    return [output / f"{name}_flow.png"] + (
        [output / f"{name}_{kind}{extension}" for kind in FLOW_KINDS] if extension else []
    )


def _existing(paths: Iterable[Path]) -> list[Path]:
    return [path for path in paths if os.path.lexists(path)]


@dataclass
class OutputPlan:
    """The names of a sequence's pairs (in the order the source gives them) and the files in the way."""

    output: Path
    extension: str | None
    names: list[str]
    video: Path | None
    taken: OutputNames
    own: list[Path] = field(default_factory=list)  # files of an earlier run on the same input
    foreign: list[Path] = field(default_factory=list)  # other files in the way (replaced only with overwrite)

    def name(self, index: int, source: FrameSource, first: Frame, second: Frame, *, overwrite: bool) -> str:
        """The name of the source's `index`-th pair; one the plan did not foresee (a video longer
        than its container announces) is checked as the planned ones were."""
        if index < len(self.names):
            return self.names[index]
        name = self.taken.unique(source.pair_name(first, second))
        files = _existing(pair_files(self.output, name, self.extension))
        if files and not overwrite and read_png_text(files[0], SOURCE_KEY) != pair_origin(first, second):
            raise ValueError(f"{files[0]} already exists: pass --overwrite to replace it, or choose another --output")
        return name


def _names_at_depth(source: FrameSource) -> tuple[OutputNames, list[str], list[str]]:
    names = OutputNames()
    planned = list(source.planned())
    return names, [names.unique(source.pair_name(a, b)) for a, b in planned], [pair_origin(a, b) for a, b in planned]


def plan_outputs(
    source: FrameSource,
    output: Path,
    extension: str | None,
    *,
    overwrite: bool,
    inputs: list[tuple[str, Path | str]],
) -> OutputPlan:
    """Choose the folders in the names (`source.depth`) so that no name is one an earlier run gave
    another input; ValueError when an output would be one of the `inputs` (what, path), or when a
    file in the way is not this input's own (unless `overwrite`)."""
    for depth in range(source.depth, source.max_depth + 1):
        source.depth = depth
        taken, names, origins = _names_at_depth(source)
        recorded = [read_png_text(output / f"{name}_flow.png", SOURCE_KEY) for name in names]
        if all(text is None or text == origin for text, origin in zip(recorded, origins)):
            break  # no name taken by another input
    stem = source.output_stem()
    plan = OutputPlan(output, extension, names, output / f"{stem}_flow.mp4" if stem is not None else None, taken)
    files = [path for name in names for path in pair_files(output, name, extension)]
    check_none_is_an_input(files + ([plan.video] if plan.video else []), "--output", inputs)
    for name, text, origin in zip(names, recorded, origins):
        (plan.own if text == origin else plan.foreign).extend(_existing(pair_files(output, name, extension)))
    if plan.video is not None and os.path.lexists(plan.video):
        (plan.own if recorded and recorded[0] == origins[0] else plan.foreign).append(plan.video)
    if plan.foreign and not overwrite:
        more = f" and {len(plan.foreign) - 1} more" if len(plan.foreign) > 1 else ""
        raise ValueError(
            f"{plan.foreign[0].name}{more} in {output}: not from a run on this input (--overwrite replaces)"
        )
    return plan


def describe_replaced(plan: OutputPlan) -> str | None:
    """One line on the files the run replaces (None: none)."""
    parts = []
    if plan.own:
        parts.append(f"{len(plan.own)} files of an earlier run on the same input")
    if plan.foreign:
        parts.append(f"{len(plan.foreign)} other files (--overwrite)")
    return f"replacing {' and '.join(parts)} in {plan.output}" if parts else None


class SequenceWriter:
    """Writes a sequence's files as its pairs arrive; the video goes to a temporary file that
    `close()` renames into place (an error leaves the earlier video as it was)."""

    def __init__(
        self, plan: OutputPlan, source: FrameSource, *, save_format: str | None, max_flow: float | None, overwrite: bool
    ) -> None:
        self.plan, self.source, self.max_flow, self.overwrite = plan, source, max_flow, overwrite
        self.write_flow: Callable[[Path, np.ndarray], None] | None = (
            SAVE_FORMATS[save_format][1] if save_format else None
        )
        self.names: list[str] = []
        self._stack = ExitStack()
        self._video: cv2.VideoWriter | None = None

    def __enter__(self) -> SequenceWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self._video is not None:
            self._video.release()
        self._stack.__exit__(kind, error, traceback)  # renames the video only when no error came

    def write(self, pair: PairFlow) -> str:
        """Write one pair's files; returns its name. ValueError naming the file when one cannot be written."""
        name = self.plan.name(len(self.names), self.source, pair.first, pair.second, overwrite=self.overwrite)
        canvas, _ = render_flow_panels(pair.first.rgb, *pair.flows, max_flow=self.max_flow)
        files = pair_files(self.plan.output, name, self.plan.extension)
        try:
            write_png(files[0], canvas, text={SOURCE_KEY: pair_origin(pair.first, pair.second)})
            for path, flow in zip(files[1:], pair.flows):
                self.write_flow(path, flow)
        except OSError as error:
            raise ValueError(str(error)) from None
        if self.plan.video is not None:
            self._add_frame(canvas)
        self.names.append(name)
        return name

    def _add_frame(self, canvas: np.ndarray) -> None:
        if self._video is None:
            tmp = self._stack.enter_context(atomic_path(self.plan.video))
            size = (canvas.shape[1], canvas.shape[0])
            self._video = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*VIDEO_CODEC), self.source.fps, size)
            if not self._video.isOpened():
                raise ValueError(f"cannot write {self.plan.video} (OpenCV has no '{VIDEO_CODEC}' encoder here)")
        self._video.write(np.ascontiguousarray(canvas[..., ::-1]))


def _file_list(folder: Path, names: list[str]) -> str:
    """`folder/: first, second` or `folder/: first ... last`."""
    return f"{folder}/: {names[0]}" + (f", {names[1]}" if len(names) == 2 else f" ... {names[-1]}")


def describe_written(output: Path, pairs: list[str], extension: str | None, details: str) -> list[str]:
    """The files written, one or two lines."""
    if len(pairs) == 1:
        lines = [f"wrote {output / (pairs[0] + '_flow.png')} ({details})"]
        if extension:
            lines.append("wrote " + ", ".join(str(output / f"{pairs[0]}_{kind}{extension}") for kind in FLOW_KINDS))
        return lines
    lines = [f"wrote {len(pairs)} visualisations to {_file_list(output, [p + '_flow.png' for p in pairs])} ({details})"]
    if extension:
        flows = [p + "_{" + ",".join(FLOW_KINDS) + "}" + extension for p in pairs]
        lines.append(f"wrote {3 * len(pairs)} flow files to " + _file_list(output, flows))
    return lines
