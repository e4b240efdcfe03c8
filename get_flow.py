"""Facial, head and expression flow for an image pair, a folder of frames or a video.

    python get_flow.py                                   # the demo pair in assets/demo/
    python get_flow.py --image1 a.png --image2 b.png --output out/ --save_flo
    python get_flow.py --frames seq/ --warm_start --max_flow 8
    python get_flow.py --video clip.mp4 --stride 2 --max_frames 100
    python get_flow.py --frames seq/ --batch_size 8         # 8 pairs per forward pass (GPUs)

For every pair (frame i, frame i+1) it writes `<output>/<name>_flow.png`: the first
frame, then the facial, head and expression flow drawn with the Middlebury colour wheel
on ONE shared scale (the largest magnitude of the three flows, or `--max_flow`), and a
legend (colour wheel + the scale in pixels). `--save_format flo` (or `--save_flo`) adds
`<name>_facial.flo`, `<name>_head.flo` and `<name>_expression.flo`; `pfm`, `kitti` (16-bit
PNG, 1/64 px, +-512 px) and `npy` (float32 [H, W, 2]) give the same three in those formats.
Videos also give `<video>_flow.mp4`.

`<name>` names the pair: `<folder>_<stem1>-<stem2>` for an image pair and for frames
(`<folder>`: the folder of the first image; a stem shared by two frames of the folder,
e.g. `0001.jpg` and `0001.png`, becomes `0001_jpg` / `0001_png`), `<video>_<frame index>`
for videos (index of the pair's first frame). A name is never used twice in one run
(a repeat gets `_2`, `_3`, ...). Nor across runs: each visualisation records its input
pair, and when `--output` already holds a name from another input (FacialFlowNet's
`happy/subject001` and `sad/subject001`), the names take as many parent folders as tell
the inputs apart (`happy_subject001_0001-0002`, `<folder>_<video>_<frame index>`). Files
of an earlier run on the same input are replaced only with `--overwrite`. An output that
is one of the inputs, or a non-finite flow, is an error (nothing is written for the pair).

The checkpoint is `--model` (a file, or a name of `python -m core.weights list`), else the
first of `checkpoints/decflow-facialflownet.pth` (the authors' release) and
`checkpoints/decflow.pth` (stage 2 of the seed training) that exists, else the release,
downloaded and verified (not with `--offline` or DECFLOW_OFFLINE=1). Images of any size
work (replicate padding, symmetric as the reference, and at
least 128 px per side; tiny images get a white margin in the visualisation); grayscale
and RGBA frames are converted to RGB. Frames are streamed: only `--batch_size` + 1 are in
memory at a time (a batch holds consecutive pairs of one size). A video that decodes fewer
frames than its container announces gives a warning.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from tqdm import tqdm

from core.checkpoint import DEFAULT_CHECKPOINTS
from core.cli import (
    UserError,
    add_model_arguments,
    add_offline_argument,
    check_none_is_an_input,
    check_output,
    device_and_precision,
    exit_on_error,
    load_model_from_args,
    resolve_checkpoint,
)
from core.defaults import DEMO_ITERS
from core.inference import FlowEstimator
from core.precision import precision_name
from core.utils.flow_viz import read_png_text, render_flow_panels, write_png
from core.utils.frame_utils import write_flo, write_kitti_flow, write_npy, write_pfm
from core.utils.frames import Frame, ImageFiles, VideoFrames, check_same_size, folder_frames, read_rgb
from core.weights import offline_requested

REPO = Path(__file__).resolve().parent
DEMO_PAIR = (REPO / "assets" / "demo" / "frame1.jpg", REPO / "assets" / "demo" / "frame2.jpg")
FLOW_KINDS = ("facial", "head", "expression")
# --save_format: (file extension, writer of a [H, W, 2] float32 flow)
SAVE_FORMATS = {
    "flo": (".flo", write_flo),
    "pfm": (".pfm", write_pfm),
    "kitti": (".png", write_kitti_flow),
    "npy": (".npy", write_npy),
}
SOURCE_KEY = "DecFlow input"  # PNG text entry of a visualisation: the pair it shows


def select_source(args: argparse.Namespace):
    """The frame source the arguments ask for (UserError when they make no sense)."""
    chosen = [
        name
        for name, value in (
            ("--image1/--image2", args.image1 or args.image2),
            ("--frames", args.frames),
            ("--video", args.video),
        )
        if value
    ]
    if len(chosen) > 1:
        raise UserError(f"give only one input: {' and '.join(chosen)} were both given")
    if args.stride < 1:
        raise UserError(f"--stride must be >= 1, got {args.stride}")
    if args.max_frames is not None and args.max_frames < 2:
        raise UserError(f"--max_frames must be >= 2 (a pair needs two frames), got {args.max_frames}")
    if args.video:
        source = VideoFrames(Path(args.video), args.stride, args.max_frames)
        if source.pairs == 0:
            raise UserError(f"video {args.video} has fewer than 2 usable frames")
        return source
    if args.frames:
        return folder_frames(Path(args.frames), stride=args.stride, max_frames=args.max_frames)
    if bool(args.image1) != bool(args.image2):
        raise UserError("--image1 and --image2 go together: give both")
    if args.image1:
        paths = [Path(args.image1), Path(args.image2)]
    else:
        paths = list(DEMO_PAIR)
        if not all(p.is_file() for p in paths):
            raise UserError(f"demo pair {paths[0]} / {paths[1]} missing: pass --image1/--image2, --frames or --video")
    first, second = (read_rgb(path, role) for path, role in zip(paths, ("image1", "image2")))
    check_same_size(str(paths[0]), first, str(paths[1]), second)  # before the model loads
    return ImageFiles(paths, role="pair", decoded=[first, second])


# --------------------------------------------------------------------------- inference
class PairFlow(NamedTuple):
    """The flows of one pair of frames, each `[H, W, 2]` float32 (x, y)."""

    first: Frame
    second: Frame
    facial: np.ndarray
    head: np.ndarray
    expression: np.ndarray


def sequence_flows(
    estimator: FlowEstimator, frames: Iterator[Frame], *, batch_size: int = 1, warm_start: bool = False
) -> Iterator[PairFlow]:
    """The flow of every pair of consecutive frames, in order, estimated `batch_size` pairs (of
    one size) at a time. `warm_start` (batch 1 only) starts each pair from the previous pair's
    low-resolution flows, each decoder from its own."""
    previous_low: tuple[torch.Tensor, torch.Tensor] | None = None
    batch: list[tuple[Frame, Frame]] = []

    def run_batch() -> Iterator[PairFlow]:
        nonlocal previous_low
        image1, image2 = (
            torch.stack([torch.from_numpy(pair[k].rgb).permute(2, 0, 1) for pair in batch]).float() for k in (0, 1)
        )
        flows = estimator(image1, image2, flow_init=previous_low if warm_start else None)
        previous_low = (flows.facial_low, flows.head_low)
        arrays = [f.permute(0, 2, 3, 1).cpu().numpy() for f in (flows.facial, flows.head, flows.expression)]
        done = [PairFlow(first, second, *(a[k] for a in arrays)) for k, (first, second) in enumerate(batch)]
        batch.clear()
        yield from done

    previous = next(frames, None)
    for current in frames:
        check_same_size(previous.label, previous.rgb, current.label, current.rgb)
        if batch and batch[0][0].rgb.shape != previous.rgb.shape:
            yield from run_batch()
        batch.append((previous, current))
        if len(batch) == batch_size:
            yield from run_batch()
        previous = current
    if batch:
        yield from run_batch()


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Estimate facial, head and expression flow with DecFlow and visualise it. "
        "Without an input option it runs on the demo pair in assets/demo/."
    )
    parser.add_argument(
        "--model",
        default=None,
        help=f"checkpoint file or registered name (python -m core.weights list; default: the first of "
        f"{', '.join(DEFAULT_CHECKPOINTS)} that exists, else the authors' release, downloaded)",
    )
    add_offline_argument(parser)
    inputs = parser.add_argument_group("inputs (one of)")
    inputs.add_argument("--image1", default=None, help="first image of a pair")
    inputs.add_argument("--image2", default=None, help="second image of a pair")
    inputs.add_argument("--frames", default=None, help="folder of frames, pairs (i, i+1) in natural sort order")
    inputs.add_argument("--video", default=None, help="video file (any format OpenCV decodes)")
    inputs.add_argument("--stride", type=int, default=1, help="use every N-th frame of a video/folder (default 1)")
    inputs.add_argument("--max_frames", type=int, default=None, help="use at most N frames of a video/folder")
    parser.add_argument(
        "--iters",
        type=int,
        default=DEMO_ITERS,
        help=f"refinement iterations (default {DEMO_ITERS}, as the reference demo)",
    )
    parser.add_argument(
        "--warm_start",
        action="store_true",
        help="sequences: start each pair from the previous pair's low-resolution flows (facial and "
        "head decoder each from its own)",
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=1,
        help="frames and videos: pairs per forward pass (consecutive pairs of one size; default 1); "
        "the same flow, more memory, higher throughput on GPUs",
    )
    parser.add_argument(
        "--max_flow",
        type=float,
        default=None,
        help="flow magnitude (px) of full colour saturation; fix it to compare frames of a sequence "
        "(default: the largest magnitude of each pair)",
    )
    parser.add_argument(
        "--save_flo",
        action="store_true",
        help="also write <name>_facial.flo, <name>_head.flo, <name>_expression.flo (the same as --save_format flo)",
    )
    parser.add_argument(
        "--save_format",
        choices=sorted(SAVE_FORMATS),
        default=None,
        help="also write the three flows in this format: flo (Middlebury), pfm, kitti (16-bit PNG), "
        "npy (float32 [H, W, 2])",
    )
    parser.add_argument("--output", default="outputs", help="output folder (default outputs/)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of an earlier run on the same input in --output (default: refuse)",
    )
    add_model_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> list[Path]:
    """Run as the command line asks; returns the visualisation files written."""
    try:
        return run(args)
    except (UserError, ValueError) as error:  # core's helpers raise ValueError
        raise SystemExit(f"get_flow.py: error: {error}") from None


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


def _file_list(folder: Path, names: list[str]) -> str:
    """`folder/: first, second` or `folder/: first ... last`."""
    return f"{folder}/: {names[0]}" + (f", {names[1]}" if len(names) == 2 else f" ... {names[-1]}")


def report(output: Path, pairs: list[str], extension: str | None, details: str) -> None:
    """The files written, one or two lines."""
    if len(pairs) == 1:
        print(f"wrote {output / (pairs[0] + '_flow.png')} ({details})")
        if extension:
            print("wrote " + ", ".join(str(output / f"{pairs[0]}_{kind}{extension}") for kind in FLOW_KINDS))
        return
    print(f"wrote {len(pairs)} visualisations to {_file_list(output, [p + '_flow.png' for p in pairs])} ({details})")
    if extension:
        print(
            f"wrote {3 * len(pairs)} flow files to "
            + _file_list(output, [p + "_{" + ",".join(FLOW_KINDS) + "}" + extension for p in pairs])
        )


def save_format(args: argparse.Namespace) -> str | None:
    """The flow-file format of `--save_format` / `--save_flo` (None: visualisations only)."""
    if args.save_flo and args.save_format not in (None, "flo"):
        raise UserError(f"--save_flo writes .flo files: it does not go with --save_format {args.save_format}")
    return "flo" if args.save_flo else args.save_format


def pair_files(output: Path, name: str, extension: str | None) -> list[Path]:
    return [output / f"{name}_flow.png"] + (
        [output / f"{name}_{kind}{extension}" for kind in FLOW_KINDS] if extension else []
    )


def plan_names(
    source, output: Path, extension: str | None, *, overwrite: bool, inputs: list[tuple[str, Path | str]]
) -> None:
    """Choose the folders in the names (`source.depth`) so that no name of this run is one an
    earlier run gave another input; UserError when a file of this run would be one of the
    `inputs` (what, path), or exists already (unless `overwrite`)."""
    for depth in range(source.depth, source.max_depth + 1):
        source.depth = depth
        names = OutputNames()
        planned = [
            (names.unique(source.pair_name(first, second)), f"{first.source} -> {second.source}")
            for first, second in source.planned()
        ]
        recorded = [read_png_text(output / f"{name}_flow.png", SOURCE_KEY) for name, _ in planned]
        if not any(text is not None and text != origin for text, (_, origin) in zip(recorded, planned)):
            break  # no name taken by another input (a visualisation of unknown input counts as this one)
    files = [path for name, _ in planned for path in pair_files(output, name, extension)]
    if source.output_stem() is not None:
        files.append(output / f"{source.output_stem()}_flow.mp4")
    check_none_is_an_input(files, "--output", inputs)
    existing = [path for path in files if path.exists()]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more of this run's files" if len(existing) > 1 else ""
        raise UserError(
            f"{existing[0]}{more} already exist (an earlier run on the same input?): pass --overwrite "
            "to replace them, or choose another --output"
        )
    if existing:
        print(f"--overwrite: replacing {len(existing)} files of an earlier run in {output}", flush=True)


def check_flows_finite(flows: tuple[np.ndarray, ...], first: Frame, second: Frame) -> None:
    for kind, flow in zip(FLOW_KINDS, flows):
        if not np.isfinite(flow).all():
            raise UserError(
                f"non-finite {kind} flow (NaN or inf) for the pair {first.label} -> {second.label}; "
                "nothing written for it"
            )


def run(args: argparse.Namespace) -> list[Path]:
    if args.iters < 1:
        raise UserError(f"--iters must be >= 1, got {args.iters}")
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.batch_size > 1 and args.warm_start:
        raise UserError("--warm_start starts each pair from the previous one: it needs --batch_size 1")
    if args.max_flow is not None and not (np.isfinite(args.max_flow) and args.max_flow > 0):
        raise UserError(f"--max_flow must be a positive number, got {args.max_flow}")
    output = check_output(args.output, "--output", folder=True)
    extension = SAVE_FORMATS[fmt][0] if (fmt := save_format(args)) else None
    source = select_source(args)
    checkpoint = resolve_checkpoint(args.model, offline=offline_requested(args.offline))
    device, amp_dtype = device_and_precision(args)
    model = load_model_from_args(args, checkpoint, device)
    estimator = FlowEstimator(
        model,
        iters=args.iters,
        device=device,
        amp_dtype=amp_dtype,
        alternate_corr=args.alternate_corr,
        pad_mode="symmetric",
    )
    plan_names(
        source,
        output,
        extension,
        overwrite=args.overwrite,
        inputs=[("checkpoint", checkpoint), *(("input", path) for path in source.paths)],
    )
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--output {output}: cannot create the folder ({error.strerror or error})") from None

    frames: Iterator[Frame] = iter(source)
    bar = None
    if isinstance(source, VideoFrames) or (isinstance(source, ImageFiles) and source.role != "pair"):
        bar = tqdm(total=source.pairs, desc="flow", unit="pair", dynamic_ncols=True)
    writer = None
    video_path = output / f"{source.output_stem()}_flow.mp4" if source.video_name else None
    names = OutputNames()
    pairs: list[str] = []
    try:
        for previous, current, *flows in sequence_flows(
            estimator, frames, batch_size=args.batch_size, warm_start=args.warm_start
        ):
            check_flows_finite(flows, previous, current)
            canvas, _ = render_flow_panels(previous.rgb, *flows, max_flow=args.max_flow)
            name = names.unique(source.pair_name(previous, current))
            files = pair_files(output, name, extension)
            if not args.overwrite and any(path.exists() for path in files):  # not planned (e.g. a longer video)
                raise UserError(
                    f"{next(path for path in files if path.exists())} already exists: pass --overwrite "
                    "to replace it, or choose another --output"
                )
            try:
                write_png(files[0], canvas, text={SOURCE_KEY: f"{previous.source} -> {current.source}"})
                for path, flow in zip(files[1:], flows):
                    SAVE_FORMATS[fmt][1](path, flow)
            except (OSError, ValueError) as error:  # e.g. a flow beyond KITTI's +-512 px
                raise UserError(str(error)) from None
            pairs.append(name)
            if video_path is not None:
                if writer is None:
                    writer = cv2.VideoWriter(
                        str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), source.fps, (canvas.shape[1], canvas.shape[0])
                    )
                    if not writer.isOpened():
                        raise UserError(f"cannot write {video_path} (OpenCV has no 'mp4v' encoder here)")
                writer.write(np.ascontiguousarray(canvas[..., ::-1]))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.release()
    shortfall = source.shortfall() if isinstance(source, VideoFrames) else None
    if not pairs:
        if isinstance(source, VideoFrames) and not shortfall:
            shortfall = f"video {source.path}: OpenCV decodes fewer than 2 frames from it (is it a video?)"
        raise UserError(shortfall or "no pair to process: the input has fewer than 2 frames")
    if shortfall:
        print(f"get_flow.py: warning: {shortfall}", file=sys.stderr, flush=True)
    report(output, pairs, extension, f"{args.iters} iterations, {precision_name(amp_dtype)} on {device}")
    if writer is not None:
        print(f"wrote {video_path}")
    return [output / f"{name}_flow.png" for name in pairs]


if __name__ == "__main__":
    exit_on_error(lambda: main(get_args_parser().parse_args()))
