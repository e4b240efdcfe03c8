"""Facial, head and expression flow for an image pair, a folder of frames or a video.

    python get_flow.py                                   # the demo pair in assets/demo/
    python get_flow.py --image1 a.png --image2 b.png --output out/ --save_flo
    python get_flow.py --frames seq/ --warm_start --max_flow 8
    python get_flow.py --video clip.mp4 --stride 2 --max_frames 100
    python get_flow.py --frames seq/ --batch_size 8         # 8 pairs per forward pass (GPUs)
    python get_flow.py --video interview.mp4 --face_crop --paste_back --save_format npy
    python get_flow.py --pairs onset_apex.csv --face_crop --save_strain   # listed pairs only
    python get_flow.py --corpus data/ --output flows/       # every sequence under data/, resumable
    torchrun --nproc_per_node 4 get_flow.py --corpus data/ --output flows/   # 4 processes (GPUs)

For every pair (frame i, frame i+1) it writes `<output>/<name>_flow.png`: the first
frame, then the facial, head and expression flow drawn with the Middlebury colour wheel
on ONE shared scale (the largest magnitude of the three flows, or `--max_flow`), and a
legend (colour wheel + the scale in pixels). `--save_format flo` (or `--save_flo`) adds
`<name>_facial.flo`, `<name>_head.flo` and `<name>_expression.flo`; `pfm`, `kitti` (16-bit
PNG, 1/64 px, +-512 px) and `npy` (float32 [H, W, 2]) give the same three in those formats.
Videos also give `<video>_flow.mp4`.

`--face_crop` detects the face on a few sampled frames (OpenCV's Haar cascade, no download; or
`--face_detector yunet:PATH`), chooses it from the evidence across them, and crops every frame
of the sequence to ONE fixed square around it (`--face_margin`; never larger than the frame's
shorter side, shifted inside the frame), resized to `--face_size`; `<sequence>_face.json`
records the square (`box_xywh_frame_px`), the scale, the detector and the frames where detection
failed, `<sequence>_face.png` shows it (field names and units: docs/outputs.md). `--paste_back`
adds `<name>_<flow>_full<ext>`: the flows in frame coordinates (vectors divided by the scale,
NaN outside the square). `--pairs FILE.csv` (`name,image1,image2` or `name,video,frame1,frame2`)
computes just the listed pairs, named by `name`. `--save_strain` adds the expression flow's
optical strain `<name>_strain.npy` ([H, W, 3] e_xx, e_yy, e_xy), `<name>_strain_magnitude.npy`
and a table of the per-pair mean facial, head and expression magnitude and strain inside the
face box (`<sequence>_strain.csv`, or `<list>_strain.csv` for a pair list).

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

`--corpus DIR` takes every leaf folder of frames and every video file under DIR as one
sequence (the options above apply inside each) and writes its files to the same relative path
under `--output` (a video's into a folder named after the file), each sequence into a hidden
folder first, with a manifest, renamed into place when complete. A rerun skips the sequences
whose manifest matches and whose files are all there. A sequence that fails goes into
`failures.jsonl` and the run goes on; the exit status says how many failed. Under torchrun each
process takes whole sequences (its LOCAL_RANK's GPU); `--shard I/N` does the same for SLURM
arrays. The rules are in core/extract/corpus.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from core import estimators
from core.cli import (
    AtLeastOne,
    UserError,
    add_batch_size_argument,
    add_model_arguments,
    add_weights_arguments,
    check_output,
    device_and_precision,
    estimator_spec,
    exit_on_error,
    exit_on_user_error,
    resolve_checkpoint,
)
from core.defaults import DEMO_ITERS
from core.extract.corpus import (
    CorpusJob,
    Sequence,
    Shard,
    check_summary,
    describe_mixed,
    extract_corpus,
    find_sequences,
    resolve_shard,
)
from core.extract.outputs import SAVE_FORMATS, describe_files, describe_written
from core.extract.pairs import extract_pairs, read_pairs, table_path
from core.extract.sequence import ExtractOptions, SequenceResult, SequenceStopped, extract_sequence
from core.extract.sources import check_selection, open_source
from core.face.crop import FACE_MARGIN, FACE_SIZE, FaceCropOptions
from core.face.detect import make_detector
from core.inference import Estimator
from core.precision import precision_name
from core.training.distributed import rank_device
from core.utils.frames import FrameSource
from core.weights import offline_requested, sha256_of


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="get_flow.py",
        description="Estimate facial, head and expression flow with DecFlow and visualise it. "
        "Without an input option it runs on the demo pair in assets/demo/.",
    )
    add_weights_arguments(parser)
    inputs = parser.add_argument_group("inputs (one of)")
    inputs.add_argument("--image1", default=None, help="first image of a pair")
    inputs.add_argument("--image2", default=None, help="second image of a pair")
    inputs.add_argument("--frames", default=None, help="folder of frames, pairs (i, i+1) in natural sort order")
    inputs.add_argument("--video", default=None, help="video file (any format OpenCV decodes)")
    inputs.add_argument(
        "--corpus",
        default=None,
        help="folder of sequences: every leaf folder of frames and every video file under it, written to the "
        "same relative paths under --output; a rerun skips the sequences already complete",
    )
    inputs.add_argument(
        "--stride", action=AtLeastOne, default=1, help="use every N-th frame of a video/folder (default 1)"
    )
    inputs.add_argument("--max_frames", action=AtLeastOne, default=None, help="use at most N frames of a video/folder")
    inputs.add_argument(
        "--pairs",
        default=None,
        help="CSV of just the pairs to compute: columns name,image1,image2 (image files) or name,video,frame1,frame2 "
        "(0-based frame indices); paths relative to the CSV's folder; files named by name",
    )
    faces = parser.add_argument_group("face crop")
    faces.add_argument(
        "--face_crop",
        action="store_true",
        help="crop every frame of a sequence (or pair-list row) to one fixed square around the face",
    )
    faces.add_argument(
        "--face_detector", default=None, help="haar (OpenCV's cascade, default) or yunet:PATH (your YuNet ONNX file)"
    )
    faces.add_argument(
        "--face_margin",
        type=float,
        default=None,
        help=f"margin on each side of the face, in face sides (default {FACE_MARGIN}: the face spans 2/3 of the crop)",
    )
    faces.add_argument(
        "--face_size",
        type=int,
        default=None,
        help=f"side of the resized crop, px (default {FACE_SIZE}, the training size)",
    )
    faces.add_argument(
        "--paste_back",
        action="store_true",
        help="also write the flows in full-frame coordinates (<name>_<flow>_full<ext>, NaN outside the crop)",
    )
    parser.add_argument(
        "--save_strain",
        action="store_true",
        help="write the expression flow's optical strain (<name>_strain.npy, <name>_strain_magnitude.npy) and "
        "a CSV of per-pair mean magnitudes and strain inside the face box",
    )
    parser.add_argument(
        "--iters",
        action=AtLeastOne,
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
    add_batch_size_argument(
        parser,
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
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="with --corpus: take only sequences I, I+N, I+2N, ... (SLURM arrays: "
        "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); under torchrun RANK/WORLD_SIZE share the corpus",
    )
    parser.add_argument("--output", default="outputs", help="output folder (default outputs/)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files in --output that no run on this input wrote (an earlier run's own files are "
        "always replaced); with --corpus: redo every sequence",
    )
    add_model_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> list[Path]:
    """Run as the command line asks; returns the visualisation files written. Bad input: a
    one-line SystemExit; anything else keeps its traceback."""
    with exit_on_user_error("get_flow.py"):
        return run(args)


def save_format(args: argparse.Namespace) -> str | None:
    """The flow-file format of `--save_format` / `--save_flo` (None: visualisations only)."""
    if args.save_flo and args.save_format not in (None, "flo"):
        raise UserError(f"--save_flo writes .flo files: it does not go with --save_format {args.save_format}")
    return "flo" if args.save_flo else args.save_format


def face_options(args: argparse.Namespace) -> FaceCropOptions | None:
    """The face crop's options (None without --face_crop); its options alone are an error."""
    given = [f"--{name}" for name in ("face_detector", "face_margin", "face_size") if getattr(args, name) is not None]
    given += ["--paste_back"] if args.paste_back else []
    if not args.face_crop:
        if given:
            raise UserError(f"{given[0]} acts on the face crop: add --face_crop")
        return None
    return FaceCropOptions(
        detector=make_detector(args.face_detector or "haar"),
        margin=FACE_MARGIN if args.face_margin is None else args.face_margin,
        size=FACE_SIZE if args.face_size is None else args.face_size,
        paste_back=args.paste_back,
    )


def face_recipe(args: argparse.Namespace, face: FaceCropOptions) -> dict:
    """The face crop's options as a corpus manifest records them (a change redoes the sequence)."""
    detector = args.face_detector or "haar"
    return {
        "detector": detector,
        "margin_face_sides": face.margin,
        "crop_side_px": face.size,
        "paste_back": face.paste_back,
    }


def open_sources(args: argparse.Namespace) -> list[FrameSource]:
    """The rows of --pairs, or the one source of the other input options."""
    if not args.pairs:
        return [
            open_source(
                image1=args.image1,
                image2=args.image2,
                frames=args.frames,
                video=args.video,
                stride=args.stride,
                max_frames=args.max_frames,
            )
        ]
    others = [flag for flag in ("image1", "image2", "frames", "video", "max_frames") if getattr(args, flag)]
    if others or args.stride != 1:
        raise UserError(f"--pairs lists its own frames: it does not go with --{(others or ['stride'])[0]}")
    return read_pairs(Path(args.pairs))


def resolve_inputs(args: argparse.Namespace, *, sources: bool = True) -> tuple[ExtractOptions, list[FrameSource]]:
    """The options and (with `sources`) the frame sources, checked before any model loads."""
    options = ExtractOptions(
        output=check_output(args.output, "--output", folder=True),
        save_format=save_format(args),
        max_flow=args.max_flow,
        batch_size=args.batch_size,
        warm_start=args.warm_start,
        overwrite=args.overwrite,
        face=face_options(args),
        save_strain=args.save_strain,
    )
    if not sources:
        check_selection(stride=args.stride, max_frames=args.max_frames)
        return options, []
    if args.frames and Path(args.frames).resolve() == options.output.resolve():
        raise UserError(
            f"--output {args.output} is the --frames folder: the pictures written there would be frames of the next "
            "run; choose another --output"
        )
    return options, open_sources(args)


def build_estimator(args: argparse.Namespace, checkpoint: str) -> tuple[Estimator, str]:
    """The estimator, and how it runs in words (for the report)."""
    if args.onnx:
        if args.warm_start or args.model:
            raise UserError("--onnx runs the exported file: it takes neither --model nor --warm_start")
        estimator = estimators.build_estimator(
            estimators.EstimatorSpec(onnx=Path(args.onnx), iters=args.iters, pad_mode="symmetric")
        )
        return estimator, f"{estimator.iters} iterations, float32 through onnxruntime"
    device, amp_dtype = device_and_precision(args)
    estimator = estimators.build_estimator(
        estimator_spec(args, checkpoint, device=device, amp_dtype=amp_dtype, pad_mode="symmetric")
    )
    return estimator, f"{estimator.iters} iterations, {precision_name(amp_dtype)} on {device}"


def report(results: list[SequenceResult], details: str, table: Path | None) -> None:
    for result in results:
        if result.warning:
            print(f"get_flow.py: warning: {result.warning}", file=sys.stderr, flush=True)
    first = results[0]
    for line in describe_written(first.output, [n for r in results for n in r.names], first.kinds, details):
        print(line)
    own = [path for result in results for path in result.sequence_files] + ([table] if table else [])
    videos = [result.video for result in results if result.video is not None]
    if own or videos:
        print(describe_files(first.output, videos + own))


def say(line: str) -> None:
    print(line, flush=True)


def resolve_corpus(args: argparse.Namespace) -> tuple[ExtractOptions, list[Sequence], list[str], Shard]:
    """The options, every sequence of --corpus, the folders that are none, and this process's share."""
    given = [flag for flag in ("image1", "image2", "frames", "video", "pairs") if getattr(args, flag)]
    if given:
        raise UserError(f"give only one input: --corpus and --{given[0]} were both given")
    options, _ = resolve_inputs(args, sources=False)
    shard = resolve_shard(args.shard, os.environ)
    sequences, mixed = find_sequences(Path(args.corpus), options.output)
    return options, sequences, mixed, shard


def run_corpus(args: argparse.Namespace) -> list[Path]:
    options, sequences, mixed, shard = resolve_corpus(args)
    checkpoint = args.onnx or resolve_checkpoint(args.model, offline=offline_requested(args.offline))
    if shard.torchrun:  # each process on its own GPU, as train.py's
        device = rank_device(args.device, shard.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        args = argparse.Namespace(**{**vars(args), "device": str(device)})
    estimator, details = build_estimator(args, checkpoint)
    described = estimator.description()  # what runs, not what was asked for
    recipe = {
        **{name: getattr(args, name) for name in ("warm_start", "stride", "max_frames", "max_flow")},
        "iters": described["iters"],
        "save_format": options.save_format,
        "save_strain": options.save_strain,
        "face_crop": None if options.face is None else face_recipe(args, options.face),
        "precision": described["precision"],
        **described["model_options"],
    }
    job = CorpusJob(
        output=options.output,
        options=options,
        stride=args.stride,
        max_frames=args.max_frames,
        weights_sha256=sha256_of(checkpoint),
        recipe=recipe,
        overwrite=args.overwrite,
        inputs=(("checkpoint", checkpoint),),
    )
    if mixed and shard.leads:
        print(f"get_flow.py: warning: {describe_mixed(mixed)}", file=sys.stderr, flush=True)
    summary = extract_corpus(sequences, shard, job, estimator)
    if summary is not None:
        print(f"{summary.line()}; {details}", flush=True)
        check_summary(summary)
    return [options.output / sequence.relative for sequence in shard.take(sequences)]


def run(args: argparse.Namespace) -> list[Path]:
    if args.corpus is not None:
        return run_corpus(args)
    if args.shard is not None:
        raise UserError("--shard shares a --corpus among processes: give --corpus")
    options, sources = resolve_inputs(args)
    checkpoint = args.onnx or resolve_checkpoint(args.model, offline=offline_requested(args.offline))
    estimator, details = build_estimator(args, checkpoint)
    inputs = [("checkpoint", checkpoint), *(("input", path) for source in sources for path in source.paths)]
    try:
        if args.pairs:
            table = table_path(Path(args.pairs), options)
            results = extract_pairs(
                sources, estimator, options, table=table, inputs=[*inputs, ("--pairs", args.pairs)], log=say
            )
        else:
            table, results = None, [extract_sequence(sources[0], estimator, options, inputs=inputs, log=say)]
    except SequenceStopped as stopped:
        raise UserError(f"{stopped}; {stopped.written_note()}") from None
    report(results, details, table)
    return [path for result in results for path in result.visualisations]


if __name__ == "__main__":
    exit_on_error(lambda: main(get_args_parser().parse_args()))
