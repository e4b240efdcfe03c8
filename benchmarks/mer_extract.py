"""Micro-expression recognition: the time per clip of `python -m core.mer extract`.

    python -m benchmarks.mer_extract                     # 6 synthetic clips; gt, dis, DecFlow expression
    python -m benchmarks.mer_extract --clips 12 --iters 12 --crop_size 256

On a synthetic corpus (core/mer/synthetic.py, 128x128 face-crop frames: the whole frame is the crop),
each method extracts every clip into a fresh cache (`core.mer.extract.extract_clips`, as the command
runs it: frames read, crop, flow, the recipe's 28x28 input, the cache folder and manifest written).
Methods: `gt` (the ground-truth flow file, read as it is), `dis` (OpenCV DIS on the crop) and DecFlow's
`expression` flow at `--crop_size` (default the command's, DecFlow's training side) with `--iters`
refinements. DecFlow runs with *random* weights (the untrained network, seeded): its time does not depend
on the weights. Weight loading is not timed. Printed per method: clips, seconds, seconds per clip.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from core.defaults import DEMO_ITERS
from core.estimators import EstimatorSpec, build_estimator
from core.face.crop import FACE_SIZE, FaceCropOptions
from core.face.detect import make_detector
from core.mer.corpora import read_dataset
from core.mer.extract import ExtractJob, FlowMethod, extract_clips, ground_truth_flow, network_flow, opencv_flow
from core.mer.inputs import INPUT_SIZE
from core.mer.synthetic import write_synthetic_corpus

CLIPS_PER_SUBJECT = 3
SEED = 0
RANDOM_WEIGHTS = "random (untrained, seeded)"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("--clips", type=int, default=6, help="synthetic clips (3 per subject)")
    parser.add_argument("--crop_size", type=int, default=FACE_SIZE, help="side DecFlow and DIS run at, px")
    parser.add_argument("--iters", type=int, default=DEMO_ITERS, help="DecFlow refinement iterations")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return parser.parse_args()


def methods(args: argparse.Namespace) -> dict[str, FlowMethod]:
    """The timed methods; DecFlow built here (not timed) with seeded random weights."""
    torch.manual_seed(SEED)
    estimator = build_estimator(EstimatorSpec(iters=args.iters, device="cpu"))
    return {
        "gt (expression, file)": ground_truth_flow("expression"),
        "dis": opencv_flow("dis"),
        f"decflow expression ({args.iters} iters)": network_flow(estimator, "expression", RANDOM_WEIGHTS),
    }


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    face = FaceCropOptions(detector=make_detector("haar"), size=args.crop_size)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        subjects = -(-args.clips // CLIPS_PER_SUBJECT)
        counts = [min(CLIPS_PER_SUBJECT, args.clips - CLIPS_PER_SUBJECT * j) for j in range(subjects)]
        csv = write_synthetic_corpus(root / "corpus", subjects=subjects, clips_per_subject=counts, seed=SEED)
        copy = read_dataset(f"synthetic={csv}")
        work = [(clip, copy) for clip in copy.clips]
        print(
            f"{len(work)} synthetic clips, frames 128x128 (whole frame = crop), crop {args.crop_size} px, "
            f"input {INPUT_SIZE} px, {torch.get_num_threads()} torch threads, DecFlow weights {RANDOM_WEIGHTS}"
        )
        for name, method in methods(args).items():
            job = ExtractJob(method=method, size=INPUT_SIZE, face=face, cache=root / "cache" / method.name)
            started = time.perf_counter()
            summary = extract_clips(work, job)
            seconds = time.perf_counter() - started
            if summary.tally.failed:
                raise SystemExit(f"{name}: {summary.tally.failed} clips failed ({summary.failures_file})")
            print(f"{name:<32} {len(work):4d} clips {seconds:8.2f} s {seconds / len(work):8.3f} s/clip", flush=True)


if __name__ == "__main__":
    main()
