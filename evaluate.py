"""Evaluate DecFlow or a classical baseline on FacialFlowNet.

    python evaluate.py --model checkpoints/decflow-facialflownet.pth --dataset facialflow
    python evaluate.py --method dis --dataset facialflow --split test --output_json dis.json

It reports facial, head and expression flow over the face mask ("masked") and the
authors' own protocol ("ffn_protocol", the paper's numbers); core.evaluation's docstring
defines both and how non-finite ground truth is left out.

The evaluation itself (metrics, protocol, baselines, table) is core.evaluation, which
train.py's validation uses too.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from core.checkpoint import description_path, sha256_of
from core.cli import (
    UserError,
    add_model_arguments,
    add_offline_argument,
    check_not_an_input,
    check_output,
    device_and_precision,
    exit_on_error,
    load_model_from_args,
    model_options,
    resolve_checkpoint,
)
from core.datasets import FacialFlow
from core.defaults import DATASET_ROOT, ITERS
from core.evaluation import BASELINES, decflow_predictor, evaluate_predictor, format_results
from core.inference import FlowEstimator
from core.precision import precision_name
from core.utils.atomic import write_text_atomic
from core.weights import offline_requested

METHODS = ("decflow", *BASELINES)
DATASETS = ("facialflow",)
SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- command line
def _finite_or_null(value: Any) -> Any:
    """NaN/inf (e.g. from a diverged model) become null: the JSON stays valid."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate DecFlow (or a classical baseline) on FacialFlowNet: EPE and 1/3/5 px accuracy "
        "of facial, head and expression flow over the face mask, plus the reference protocol."
    )
    parser.add_argument(
        "--model",
        default=None,
        help="DecFlow checkpoint file or registered name (python -m core.weights list; default: the "
        "authors' release, else stage 2 of the seed training, in checkpoints/, else the release, "
        "downloaded; see checkpoints/README.md)",
    )
    add_offline_argument(parser)
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="decflow",
        help="decflow (default), or a baseline: zero flow, OpenCV DIS, OpenCV Farneback",
    )
    parser.add_argument("--dataset", choices=DATASETS, default="facialflow")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--root", default=DATASET_ROOT, help=f"FacialFlowNet folder (default {DATASET_ROOT})")
    parser.add_argument(
        "--iters", type=int, default=ITERS, help=f"refinement iterations (default {ITERS}, as the reference)"
    )
    parser.add_argument("--max_pairs", type=int, default=None, help="evaluate only the first N pairs")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=1,
        help="pairs per forward pass (consecutive pairs of one size; default 1); the same numbers, "
        "more memory, higher throughput on GPUs",
    )
    parser.add_argument("--output_json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bar")
    add_model_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as the command line asks; returns the JSON document. Raises UserError."""
    if args.iters < 1:
        raise UserError(f"--iters must be >= 1, got {args.iters}")
    if args.max_pairs is not None and args.max_pairs < 1:
        raise UserError(f"--max_pairs must be >= 1, got {args.max_pairs}")
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {args.batch_size}")
    # the path itself before any work, so that no result is lost to a bad one (its inputs below)
    out = check_output(args.output_json, "--output_json") if args.output_json else None
    decflow = args.method == "decflow"
    device, amp_dtype = device_and_precision(args, mixed=decflow)

    root = Path(args.root)
    if not root.is_dir():
        raise UserError(f"dataset folder {root} not found (pass the FacialFlowNet folder with --root)")
    split_dir = root / "image" / "facial" / args.split
    if not split_dir.is_dir():
        raise UserError(f"split '{args.split}' not found: {split_dir} does not exist")
    try:
        dataset = FacialFlow(None, split=args.split, dataset_root=root)
    except ValueError as error:
        raise UserError(str(error).splitlines()[0]) from None
    # after the dataset checks: a mistyped --root costs no download
    checkpoint = resolve_checkpoint(args.model, offline=offline_requested(args.offline)) if decflow else None
    if out is not None:  # never one of the inputs
        check_not_an_input(
            out,
            "--output_json",
            [("checkpoint", checkpoint), ("description", checkpoint and description_path(checkpoint))],
        )
        if out.exists() and out.resolve().is_relative_to(root.resolve()):
            raise UserError(
                f"--output_json {out} is a file of the dataset (--root {args.root}): refusing to overwrite an input"
            )

    meta: dict[str, Any] = {
        "method": args.method,
        "checkpoint": None,
        "checkpoint_sha256": None,
        "iters": None,
        "padding_mode": None,
        "precision": "float32",
        "device": str(device),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "dataset_root": str(root),
        "max_pairs": args.max_pairs,
    }
    if decflow:
        model = load_model_from_args(args, checkpoint, device)
        estimator = FlowEstimator(
            model,
            iters=args.iters,
            device=device,
            amp_dtype=amp_dtype,
            alternate_corr=args.alternate_corr,
            pad_mode="exp",
        )
        predictor: Callable = decflow_predictor(estimator)
        meta.update(
            checkpoint=str(checkpoint),
            checkpoint_sha256=sha256_of(checkpoint),
            iters=args.iters,
            padding_mode="exp",
            precision=precision_name(amp_dtype),
            model_options=model_options(args),
        )
    else:
        predictor = BASELINES[args.method]()
        meta["device"] = "cpu"
        if hasattr(predictor, "description"):
            meta.update(opencv_version=cv2.__version__, baseline=predictor.description)
    meta["mask"] = (
        "masked metrics: face-mask pixels (mask != 0) with valid ground truth (finite and "
        "|u|,|v| < 1000; expression: facial and head valid); ffn_protocol: whole-image sums over "
        "pixels with finite ground truth, mask != 0 pixels with finite ground truth as denominator"
    )

    try:  # a damaged file of the split (named in the message) or a non-finite prediction
        results = evaluate_predictor(
            predictor,
            dataset,
            max_pairs=args.max_pairs,
            progress=not args.no_progress,
            has_head=args.method in ("decflow", "zero"),
            batch_size=args.batch_size,
        )
    except (ValueError, FileNotFoundError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    meta["pairs_without_mask"] = results.pop("pairs_without_mask")
    meta["scored_pairs"] = results.pop("scored_pairs")
    meta["nonfinite_gt_pixels"] = results.pop("nonfinite_gt_pixels")
    for block in results["per_emotion"].values():
        for key in ("pairs_without_mask", "scored_pairs", "nonfinite_gt_pixels"):
            block.pop(key)
    return {
        "dataset": args.dataset,
        "split": args.split,
        "pairs": results["pairs"],
        "iters": args.iters if decflow else None,
        "facial": results["facial"],
        "head": results["head"],
        "expression": results["expression"],
        "ffn_protocol": results["ffn_protocol"],
        "per_emotion": results["per_emotion"],
        "meta": meta,
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    try:
        document = run(args)
    except UserError as error:
        raise SystemExit(f"evaluate.py: error: {error}") from None
    meta = document["meta"]
    method = args.method if args.method != "decflow" else f"DecFlow {meta['checkpoint']}, {args.iters} iterations"
    print(
        format_results(
            {**document, **{key: meta[key] for key in ("pairs_without_mask", "scored_pairs", "nonfinite_gt_pixels")}},
            title=f"{args.dataset} {args.split} | {method} | {document['meta']['precision']} "
            f"on {document['meta']['device']}",
        )
    )
    if args.output_json:
        out = Path(args.output_json)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out, json.dumps(_finite_or_null(document), indent=2, allow_nan=False) + "\n")
        except OSError as error:
            raise SystemExit(f"evaluate.py: error: --output_json {out}: {error.strerror or error}") from None
        print(f"results written to {out}")
    return document


if __name__ == "__main__":
    exit_on_error(lambda: main(get_args_parser().parse_args()))
