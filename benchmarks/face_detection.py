"""Face detection time per frame next to the flow's time per pair, on CPU (`--face_crop`'s cost).

    python -m benchmarks.face_detection                      # 640x480 and 1920x1080, flow at 480x480, 24 iterations
    python -m benchmarks.face_detection --full_frame         # also the flow of the whole 640x480 frame

The frames are the tests' astronaut clip (scikit-image's photo on blurred noise, whose false
positives make the cascade work harder than on a plain background) resized to each size. The
flow runs where `--face_crop` runs it: on the `--face_size` crop (default 480x480) with
get_flow's default iterations. The goal: one frame's detection under 10 % of one pair's flow.
Detection runs on `FACE_SAMPLES` frames per sequence, so per pair it costs less still.
"""

from __future__ import annotations

import argparse
from functools import partial

import cv2
import torch

from benchmarks.benchmark import build_model, make_pair
from benchmarks.timing import interleaved_best
from core.cli import DocstringHelpFormatter
from core.defaults import DEMO_ITERS
from core.face.crop import FACE_SAMPLES, FACE_SIZE
from core.face.detect import HaarDetector
from core.inference import FlowEstimator
from tests.face_helpers import astronaut_clip

SIZES = ((640, 480), (1920, 1080))  # (W, H) of the frames detected on
GOAL = 0.10  # detection per frame / flow per pair


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=DocstringHelpFormatter)
    parser.add_argument("--iters", type=int, default=DEMO_ITERS, help="flow iterations (get_flow's default)")
    parser.add_argument("--face_size", type=int, default=FACE_SIZE, help="side of the crop the flow runs on")
    parser.add_argument("--repeats", type=int, default=3, help="detection: best of N")
    parser.add_argument("--full_frame", action="store_true", help="also time the flow of the whole 640x480 frame")
    parser.add_argument("--threads", type=int, default=None, help="torch and OpenCV threads (default: theirs)")
    return parser


def flow_seconds(height: int, width: int, iters: int) -> float:
    """One pair's flow (best of 2 after a warm-up) on CPU in float32."""
    estimator = FlowEstimator(build_model(), iters=iters, device="cpu", pad_mode="symmetric")
    image1, image2 = make_pair(1, height, width)
    return interleaved_best({"flow": lambda: estimator(image1, image2)}, warmup=1, repeats=2)["flow"]


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, torch threads {torch.get_num_threads()}, "
          f"OpenCV {cv2.__version__} threads {cv2.getNumThreads()}")  # fmt: skip
    detector, scene = HaarDetector(), astronaut_clip(1)[0]
    detect = {}
    for width, height in SIZES:
        frame = cv2.resize(scene, (width, height), interpolation=cv2.INTER_AREA)
        runs = {"detect": partial(detector.detect, frame)}
        detect[(width, height)] = interleaved_best(runs, warmup=1, repeats=args.repeats)["detect"]
        boxes = len(detector.detect(frame))
        print(f"detection at {width}x{height}: {1000 * detect[(width, height)]:.0f} ms per frame, {boxes} boxes")
    flows = {f"{args.face_size}x{args.face_size} crop": flow_seconds(args.face_size, args.face_size, args.iters)}
    if args.full_frame:
        flows["640x480 whole frame"] = flow_seconds(480, 640, args.iters)
    print(f"\n| frame | detection ms/frame | flow | flow ms/pair | detection / flow (goal < {GOAL:.0%}) |")
    print("|---|---|---|---|---|")
    for (width, height), seconds in detect.items():
        for name, flow in flows.items():
            ratio = seconds / flow
            mark = "ok" if ratio < GOAL else "over"
            print(f"| {width}x{height} | {1000 * seconds:.0f} | {name}, {args.iters} it | {1000 * flow:.0f} | "
                  f"{ratio:.1%} ({mark}) |")  # fmt: skip
    print(f"\n(detection runs on {FACE_SAMPLES} sampled frames per sequence, not on every frame)")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
