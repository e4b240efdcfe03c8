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
the inputs apart (`happy_subject001_0001-0002`, `<folder>_<video>_<frame index>`). A rerun
on the same input replaces that input's own earlier files (one line says so); any other file
in the way is replaced only with `--overwrite`. Every file is written to a temporary file in
`--output` and renamed (a symbolic link there is replaced, its target never written). An
output that is one of the inputs, or a non-finite flow, is an error (nothing is written for
the pair).

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
from pathlib import Path

from core.checkpoint import DEFAULT_CHECKPOINTS
from core.cli import (
    UserError,
    add_model_arguments,
    add_offline_argument,
    check_output,
    device_and_precision,
    exit_on_error,
    load_model_from_args,
    resolve_checkpoint,
)
from core.defaults import DEMO_ITERS
from core.extract.outputs import SAVE_FORMATS, describe_written
from core.extract.sequence import ExtractOptions, SequenceResult, extract_sequence
from core.extract.sources import FrameSource, open_source
from core.inference import FlowEstimator
from core.onnx_runtime import OnnxFlowEstimator
from core.precision import precision_name
from core.weights import offline_requested


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
        default=None,
        help=f"refinement iterations (default {DEMO_ITERS}, as the reference demo; with --onnx the file's)",
    )
    parser.add_argument(
        "--onnx",
        default=None,
        help="run this export of python -m core.export through onnxruntime (CPU) instead of --model",
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
        help="replace files in --output that no run on this input wrote (an earlier run's own files are "
        "always replaced)",
    )
    add_model_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> list[Path]:
    """Run as the command line asks; returns the visualisation files written."""
    try:
        return run(args)
    except (UserError, ValueError) as error:  # core's helpers raise ValueError
        raise SystemExit(f"get_flow.py: error: {error}") from None


def save_format(args: argparse.Namespace) -> str | None:
    """The flow-file format of `--save_format` / `--save_flo` (None: visualisations only)."""
    if args.save_flo and args.save_format not in (None, "flo"):
        raise UserError(f"--save_flo writes .flo files: it does not go with --save_format {args.save_format}")
    return "flo" if args.save_flo else args.save_format


def resolve_inputs(args: argparse.Namespace) -> tuple[ExtractOptions, FrameSource]:
    """The options and the frame source, checked before any model loads."""
    if args.iters is not None and args.iters < 1:
        raise UserError(f"--iters must be >= 1, got {args.iters}")
    options = ExtractOptions(
        output=check_output(args.output, "--output", folder=True),
        save_format=save_format(args),
        max_flow=args.max_flow,
        batch_size=args.batch_size,
        warm_start=args.warm_start,
        overwrite=args.overwrite,
    )
    source = open_source(
        image1=args.image1,
        image2=args.image2,
        frames=args.frames,
        video=args.video,
        stride=args.stride,
        max_frames=args.max_frames,
    )
    return options, source


def build_estimator(args: argparse.Namespace, checkpoint: str) -> tuple[FlowEstimator, str]:
    """The estimator, and how it runs in words (for the report)."""
    if args.onnx:
        if args.warm_start or args.model:
            raise UserError("--onnx runs the exported file: it takes neither --model nor --warm_start")
        estimator = OnnxFlowEstimator(args.onnx, iters=args.iters, pad_mode="symmetric")
        return estimator, f"{estimator.iters} iterations, float32 through onnxruntime"
    iters = DEMO_ITERS if args.iters is None else args.iters
    device, amp_dtype = device_and_precision(args)
    model = load_model_from_args(args, checkpoint, device)
    estimator = FlowEstimator(
        model,
        iters=iters,
        device=device,
        amp_dtype=amp_dtype,
        alternate_corr=args.alternate_corr,
        pad_mode="symmetric",
    )
    return estimator, f"{iters} iterations, {precision_name(amp_dtype)} on {device}"


def report(result: SequenceResult, details: str) -> None:
    if result.warning:
        print(f"get_flow.py: warning: {result.warning}", file=sys.stderr, flush=True)
    for line in describe_written(result.output, result.names, result.extension, details):
        print(line)
    if result.video is not None:
        print(f"wrote {result.video}")


def run(args: argparse.Namespace) -> list[Path]:
    options, source = resolve_inputs(args)
    checkpoint = args.onnx or resolve_checkpoint(args.model, offline=offline_requested(args.offline))
    estimator, details = build_estimator(args, checkpoint)
    inputs = [("checkpoint", checkpoint), *(("input", path) for path in source.paths)]
    result = extract_sequence(source, estimator, options, inputs=inputs, log=lambda line: print(line, flush=True))
    report(result, details)
    return result.visualisations


if __name__ == "__main__":
    exit_on_error(lambda: main(get_args_parser().parse_args()))
