"""The files of a sequence in `--output`: their names, what happens to files already there, and writing them.

Every pair of frames gives `<name>_flow.png` (the visualisation, which records its input pair
in a PNG text entry) and, with a flow format, `<name>_{facial,head,expression}<ext>`; a video
gives `<stem>_flow.mp4` too. With a face crop, the sequence gives `<sequence>_face.json` (the
crop) and `<sequence>_face.png` (its first sampled frame with the crop drawn), and `paste_back`
adds `<name>_{facial,head,expression}_full<ext>` (full-frame coordinates, NaN outside the crop).
Strain adds `<name>_strain.npy` ([H, W, 3] e_xx, e_yy, e_xy), `<name>_strain_magnitude.npy`
([H, W]) and the sequence's table `<sequence>_strain.csv` (one row per pair).

Names are never used twice in one run, and never one that an earlier run gave another input:
the names take as many parent folders as tell the inputs apart.

Files already in `--output`:
- those of an earlier run on the same input (the visualisation records this pair; a sequence's
  own files go with its first pair) are replaced, with one line saying so: a rerun just works;
- any other file in the way (no record of its input) is replaced only with `overwrite`;
- an input is never an output.
Every file is written to a temporary file in `--output` and renamed into place
(`core.utils.atomic`): a symbolic link in the way is replaced, its target never written.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from core.cli import check_none_is_an_input
from core.errors import UserError
from core.extract.flows import FLOW_KINDS, PairFlow
from core.face.crop import FaceCrop
from core.strain import PairMeasures, measure_pair, strain_magnitude, strain_tensor
from core.utils.atomic import atomic_path, write_text_atomic
from core.utils.flow_io import write_flo, write_kitti_flow, write_npy, write_pfm
from core.utils.flow_viz import read_png_text, render_flow_panels, write_png
from core.utils.frames import Frame, FrameSource

# --save_format: (file extension, writer of a [H, W, 2] float32 flow)
SAVE_FORMATS = {
    "flo": (".flo", write_flo),
    "pfm": (".pfm", write_pfm),
    "kitti": (".png", write_kitti_flow),
    "npy": (".npy", write_npy),
}
SOURCE_KEY = "DecFlow input"  # PNG text entry of a visualisation: the pair it shows
VIDEO_CODEC = "mp4v"
CROP_COLOUR, FACE_COLOUR = (0, 255, 0), (255, 0, 0)  # <sequence>_face.png: the crop, the face's detections
CROP_LINE_PX, FACE_LINE_PX = 2, 1  # their outlines' widths, drawn inside the boxes


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


@dataclass(frozen=True)
class OutputKinds:
    """Which files a run writes, beyond each pair's visualisation."""

    extension: str | None = None  # of the three flow files (None: none)
    paste_back: bool = False  # the flows in full-frame coordinates too (needs `extension`)
    face: bool = False  # the sequence's face crop: JSON and picture
    strain: bool = False  # the expression flow's strain maps
    table: bool = False  # the sequence's strain table

    def pair_files(self, output: Path, name: str) -> list[Path]:
        """The visualisation, the three flow files, their full-frame copies, the two strain maps."""
        files = [output / f"{name}_flow.png"]
        if self.extension:
            files += [output / f"{name}_{kind}{self.extension}" for kind in FLOW_KINDS]
        if self.paste_back:
            files += [output / f"{name}_{kind}_full{self.extension}" for kind in FLOW_KINDS]
        if self.strain:
            files += [output / f"{name}_strain.npy", output / f"{name}_strain_magnitude.npy"]
        return files

    def sequence_files(self, output: Path, stem: str) -> list[Path]:
        """The face crop's JSON and picture, the strain table."""
        face = [output / f"{stem}_face.json", output / f"{stem}_face.png"] if self.face else []
        return face + ([output / f"{stem}_strain.csv"] if self.table else [])


def _existing(paths: Iterable[Path]) -> list[Path]:
    return [path for path in paths if os.path.lexists(path)]


@dataclass
class OutputPlan:
    """The names of a sequence's pairs (in the order the source gives them) and the files in the way."""

    output: Path
    kinds: OutputKinds
    names: list[str]
    video: Path | None
    sequence: list[Path]  # the sequence's own files (face crop, strain table)
    taken: OutputNames
    own: list[Path] = field(default_factory=list)  # files of an earlier run on the same input
    foreign: list[Path] = field(default_factory=list)  # other files in the way (replaced only with overwrite)

    def name(self, index: int, source: FrameSource, first: Frame, second: Frame, *, overwrite: bool) -> str:
        """The name of the source's `index`-th pair; one the plan did not foresee (a video longer
        than its container announces) is checked as the planned ones were."""
        if index < len(self.names):
            return self.names[index]
        name = self.taken.unique(source.pair_name(first, second))
        files = _existing(self.kinds.pair_files(self.output, name))
        if files and not overwrite and read_png_text(files[0], SOURCE_KEY) != pair_origin(first, second):
            raise UserError(f"{files[0]} already exists: pass --overwrite to replace it, or choose another --output")
        return name


def _names_at_depth(source: FrameSource) -> tuple[OutputNames, list[str], list[str]]:
    names = OutputNames()
    planned = list(source.planned())
    return names, [names.unique(source.pair_name(a, b)) for a, b in planned], [pair_origin(a, b) for a, b in planned]


def plan_outputs(
    source: FrameSource,
    output: Path,
    kinds: OutputKinds,
    *,
    overwrite: bool,
    inputs: list[tuple[str, Path | str]],
) -> OutputPlan:
    """Choose the folders in the names (`source.depth`) so that no name is one an earlier run gave
    another input; UserError when an output would be one of the `inputs` (what, path), or when a
    file in the way is not this input's own (unless `overwrite`)."""
    for depth in range(source.depth, source.max_depth + 1):
        source.depth = depth
        taken, names, origins = _names_at_depth(source)
        recorded = [read_png_text(output / f"{name}_flow.png", SOURCE_KEY) for name in names]
        if all(text is None or text == origin for text, origin in zip(recorded, origins)):
            break  # no name taken by another input
    stem = source.output_stem()
    video = output / f"{stem}_flow.mp4" if stem is not None else None
    plan = OutputPlan(output, kinds, names, video, kinds.sequence_files(output, source.sequence_name()), taken)
    whole = ([video] if video else []) + plan.sequence  # files of the whole sequence: its first pair's rule
    files = [path for name in names for path in kinds.pair_files(output, name)]
    check_none_is_an_input(files + whole, "--output", inputs)
    for name, text, origin in zip(names, recorded, origins):
        (plan.own if text == origin else plan.foreign).extend(_existing(kinds.pair_files(output, name)))
    pictures = [read_png_text(path, SOURCE_KEY) for path in plan.sequence if path.suffix == ".png"]
    ours = bool(recorded) and origins[0] in (recorded[0], *pictures)  # the face picture records it too
    (plan.own if ours else plan.foreign).extend(_existing(whole))
    if plan.foreign and not overwrite:
        more = f" and {len(plan.foreign) - 1} more" if len(plan.foreign) > 1 else ""
        raise UserError(
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


def write_array(path: Path, array: np.ndarray) -> None:
    """A float32 `.npy` array (no pickling), through a temporary file."""
    with atomic_path(path) as tmp:
        np.save(tmp, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)


def write_full_flow(save_format: str, path: Path, flow: np.ndarray) -> None:
    """A full-frame flow (NaN outside the crop); KITTI PNGs mark those pixels invalid instead."""
    if save_format == "kitti":
        write_kitti_flow(path, np.nan_to_num(flow), valid=np.isfinite(flow).all(axis=-1))
    else:
        SAVE_FORMATS[save_format][1](path, flow)


def draw_outline(image: np.ndarray, box: Sequence[float], colour: tuple[int, int, int], thickness: int) -> None:
    """Draw the (x, y, w, h) box's outline, `thickness` px inside its edges, clipped to the image:
    the edges that lie outside it are drawn along its border."""
    height, width = image.shape[:2]
    x, y, w, h = (int(round(v)) for v in box)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x0 >= x1 or y0 >= y1:
        return
    image[y0 : y0 + thickness, x0:x1] = colour
    image[max(y1 - thickness, y0) : y1, x0:x1] = colour
    image[y0:y1, x0 : x0 + thickness] = colour
    image[y0:y1, max(x1 - thickness, x0) : x1] = colour


def draw_crop(picture: np.ndarray, crop: FaceCrop) -> np.ndarray:
    """A copy of `picture` (a sampled frame) with the crop's square and the face's detections drawn."""
    drawn = picture.copy()
    draw_outline(drawn, (crop.x, crop.y, crop.side, crop.side), CROP_COLOUR, CROP_LINE_PX)
    draw_outline(drawn, crop.face, FACE_COLOUR, FACE_LINE_PX)
    return drawn


def write_face_files(plan: OutputPlan, crop: FaceCrop, record: dict, picture: np.ndarray, origin: str) -> None:
    """The sequence's `<sequence>_face.json` (`record`) and `<sequence>_face.png` (`draw_crop`);
    UserError naming a file it cannot write."""
    drawn = draw_crop(picture, crop)
    json_path, png_path = plan.sequence[:2]
    try:
        write_text_atomic(
            json_path, "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items()) + "\n}\n"
        )
        write_png(png_path, drawn, text={SOURCE_KEY: origin})
    except OSError as error:
        raise UserError(f"cannot write {json_path.name} or {png_path.name} in {plan.output} ({error})") from None


def write_strain_table(path: Path, rows: Sequence[PairMeasures], *, cropped: bool) -> None:
    """One CSV row per pair (`PairMeasures.header` columns, in crop pixels when `cropped`, else in
    frame pixels), through a temporary file."""
    text = io.StringIO()
    table = csv.writer(text, lineterminator="\n")
    table.writerow(PairMeasures.header("crop" if cropped else "frame"))
    table.writerows(row.row() for row in rows)
    try:
        write_text_atomic(path, text.getvalue())
    except OSError as error:
        raise UserError(f"cannot write {path} ({error.strerror or error})") from None


class SequenceWriter:
    """Writes a sequence's files as its pairs arrive; the video goes to a temporary file that
    `close()` renames into place (an error leaves the earlier video as it was). With a face crop,
    `paste_back` flows are the crop's flows in frame coordinates, and the strain table's means
    cover the face box; without one, the whole frame."""

    def __init__(
        self,
        plan: OutputPlan,
        source: FrameSource,
        *,
        save_format: str | None,
        max_flow: float | None,
        overwrite: bool,
        crop: FaceCrop | None = None,
    ) -> None:
        self.plan, self.source, self.max_flow, self.overwrite = plan, source, max_flow, overwrite
        self.save_format, self.crop = save_format, crop
        self.write_flow: Callable[[Path, np.ndarray], None] | None = (
            SAVE_FORMATS[save_format][1] if save_format else None
        )
        self.names: list[str] = []
        self.measures: list[PairMeasures] = []  # with strain: one per pair
        self._stack = ExitStack()
        self._video: cv2.VideoWriter | None = None

    def __enter__(self) -> SequenceWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self._video is not None:
            self._video.release()
        self._stack.__exit__(kind, error, traceback)  # renames the video only when no error came

    def write(self, pair: PairFlow) -> str:
        """Write one pair's files; returns its name. UserError naming the file when one cannot be written."""
        name = self.plan.name(len(self.names), self.source, pair.first, pair.second, overwrite=self.overwrite)
        canvas, _ = render_flow_panels(pair.first.rgb, *pair.flows, max_flow=self.max_flow)
        kinds = self.plan.kinds
        files = iter(kinds.pair_files(self.plan.output, name))  # in the order they are written below
        try:
            write_png(next(files), canvas, text={SOURCE_KEY: pair_origin(pair.first, pair.second)})
            for flow in pair.flows if kinds.extension else ():
                self.write_flow(next(files), flow)
            for flow in pair.flows if kinds.paste_back else ():
                write_full_flow(self.save_format, next(files), self.crop.paste_back(flow))
            if kinds.strain:
                self.measures.append(self._write_strain(name, pair, next(files), next(files)))
        except OSError as error:
            raise UserError(str(error)) from None
        if self.plan.video is not None:
            self._add_frame(canvas)
        self.names.append(name)
        return name

    def _write_strain(self, name: str, pair: PairFlow, tensor_path: Path, magnitude_path: Path) -> PairMeasures:
        tensor = strain_tensor(pair.expression)  # [H, W, 3]
        magnitude = strain_magnitude(tensor)  # [H, W]
        write_array(tensor_path, tensor)
        write_array(magnitude_path, magnitude)
        height, width = magnitude.shape
        box = self.crop.face_in_crop() if self.crop is not None else (0.0, 0.0, float(width), float(height))
        return measure_pair(name, pair.flows, magnitude, box)

    def _add_frame(self, canvas: np.ndarray) -> None:
        if self._video is None:
            tmp = self._stack.enter_context(atomic_path(self.plan.video))
            size = (canvas.shape[1], canvas.shape[0])
            self._video = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*VIDEO_CODEC), self.source.fps, size)
            if not self._video.isOpened():
                raise UserError(f"cannot write {self.plan.video} (OpenCV has no '{VIDEO_CODEC}' encoder here)")
        self._video.write(np.ascontiguousarray(canvas[..., ::-1]))


def _file_list(folder: Path, names: list[str]) -> str:
    """`folder/: first, second` or `folder/: first ... last`."""
    return f"{folder}/: {names[0]}" + (f", {names[1]}" if len(names) == 2 else f" ... {names[-1]}")


def describe_files(output: Path, files: list[Path]) -> str:
    """`wrote a, b` for up to three files, else `wrote N files to folder/: first ... last`."""
    if len(files) <= 3:
        return "wrote " + ", ".join(map(str, files))
    return f"wrote {len(files)} files to {_file_list(output, [f.name for f in files])}"


def describe_written(output: Path, pairs: list[str], kinds: OutputKinds, details: str) -> list[str]:
    """The files written, one line per kind."""
    if len(pairs) == 1:
        lines = [f"wrote {output / (pairs[0] + '_flow.png')} ({details})"]
    else:
        visualisations = _file_list(output, [p + "_flow.png" for p in pairs])
        lines = [f"wrote {len(pairs)} visualisations to {visualisations} ({details})"]
    groups = (  # (written, what, suffixes, extension)
        (kinds.extension, "flow files", FLOW_KINDS, kinds.extension),
        (kinds.paste_back, "full-frame flow files", [f"{kind}_full" for kind in FLOW_KINDS], kinds.extension),
        (kinds.strain, "strain maps", ["strain", "strain_magnitude"], ".npy"),
    )
    for written, what, suffixes, extension in groups:
        if not written:
            continue
        if len(pairs) == 1:
            lines.append("wrote " + ", ".join(str(output / f"{pairs[0]}_{s}{extension}") for s in suffixes))
        else:
            pattern = [p + "_{" + ",".join(suffixes) + "}" + extension for p in pairs]
            lines.append(f"wrote {len(suffixes) * len(pairs)} {what} to " + _file_list(output, pattern))
    return lines
