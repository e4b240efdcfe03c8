"""``python -m core.synthetic``: write (and optionally verify) a synthetic FacialFlowNet copy."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from core.synthetic.check import verify
from core.synthetic.sequence import FACE_SCALE, FRAME_INTERVAL
from core.synthetic.writer import SPLITS, generate


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m core.synthetic",
        description="Write a synthetic dataset in the FacialFlowNet layout (image/facial, image/head, "
        "flow/facial, flow/head, mask) with exact ground-truth facial and head flow.",
    )
    parser.add_argument("--root", required=True, type=Path, help="output folder (the FacialFlowNet root)")
    parser.add_argument("--subjects", type=int, default=3, help="subjects (sequences) per split (default: 3)")
    parser.add_argument("--frames", type=int, default=5, help="frames per subject, >= 2 (default: 5)")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(256, 256),
        metavar=("H", "W"),
        help="frame height and width (default: 256 256)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed; equal seeds give identical data (default: 0)")
    parser.add_argument(
        "--frame_interval",
        type=float,
        default=FRAME_INTERVAL,
        metavar="T",
        help="motion time between consecutive frames: 2 renders every second frame of the same motion, "
        "so about twice the motion per frame; use it for realistic motion in pixels at small sizes "
        f"(default: {FRAME_INTERVAL:g})",
    )
    parser.add_argument(
        "--face_scale",
        type=float,
        default=FACE_SCALE,
        metavar="S",
        help="face size relative to the default (face about 11 %% of the frame): 2 fills most of the "
        f"frame with the face, so that a loss over whole crops is mostly about the face (default: {FACE_SCALE:g})",
    )
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), help="splits to write (default: train val test)")
    parser.add_argument(
        "--verify", action="store_true", help="after writing, report the warp error of the ground truth on face pixels"
    )
    parser.add_argument("--no-progress", "--no_progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (``python -m core.synthetic --help``)."""
    args = get_args_parser().parse_args(argv)

    start = time.perf_counter()
    written = generate(
        args.root,
        args.subjects,
        args.frames,
        tuple(args.size),
        args.seed,
        args.splits,
        progress=not args.no_progress,
        frame_interval=args.frame_interval,
        face_scale=args.face_scale,
    )
    elapsed = time.perf_counter() - start
    pairs = len(written) * (args.frames - 1)
    print(
        f"wrote {len(written)} sequences ({pairs} pairs, {args.size[0]}x{args.size[1]}) to {args.root} "
        f"in {elapsed:.2f} s"
    )
    if args.verify:
        err = verify(args.root, args.splits)
        print(
            f"mean warp error on face pixels (0..255): facial {err['facial']:.2f} "
            f"(zero flow {err['facial_zero']:.2f}), head {err['head']:.2f} (zero flow {err['head_zero']:.2f})"
        )
