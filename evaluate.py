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

from core.checkpoint import description_path
from core.cli import (
    AtLeastOne,
    UserError,
    add_batch_size_argument,
    add_model_arguments,
    add_weights_arguments,
    check_not_an_input,
    check_output,
    device_and_precision,
    estimator_spec,
    exit_on_error,
    exit_on_user_error,
    resolve_checkpoint,
)
from core.datasets import FacialFlow, split_problem
from core.defaults import DATASET_ROOT, ITERS
from core.estimators import build_estimator
from core.evaluation import BASELINES, decflow_predictor, evaluate_predictor, format_results
from core.utils.atomic import write_text_atomic
from core.weights import offline_requested, sha256_of

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
        allow_abbrev=False,
        prog="evaluate.py",
        description="Evaluate DecFlow (or a classical baseline) on FacialFlowNet: EPE and 1/3/5 px accuracy "
        "of facial, head and expression flow over the face mask, plus the reference protocol.",
    )
    add_weights_arguments(parser)
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
        "--iters", action=AtLeastOne, default=ITERS, help=f"refinement iterations (default {ITERS}, as the reference)"
    )
    parser.add_argument("--max_pairs", action=AtLeastOne, default=None, help="evaluate only the first N pairs")
    add_batch_size_argument(
        parser,
        help="pairs per forward pass (consecutive pairs of one size; default 1); the same numbers, "
        "more memory, higher throughput on GPUs",
    )
    parser.add_argument("--output_json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bar")
    add_model_arguments(parser)
    return parser


# The pixels each metric is over, as the JSON document states it.
MASK_NOTE = (
    "masked metrics: face-mask pixels (mask != 0) with valid ground truth (finite and "
    "|u|,|v| < 1000; expression: facial and head valid); ffn_protocol: whole-image sums over "
    "pixels with finite ground truth, mask != 0 pixels with finite ground truth as denominator"
)
# Counts of the evaluation that go to the document's "meta" (and out of every results block).
COUNT_KEYS = ("pairs_without_mask", "scored_pairs", "nonfinite_gt_pixels")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as the command line asks; returns the JSON document. Raises UserError."""
    out = check_arguments(args)
    decflow = args.method == "decflow"
    device, amp_dtype = device_and_precision(args, mixed=decflow)
    dataset = open_split(args)
    # after the dataset checks: a mistyped --root costs no download
    checkpoint = resolve_checkpoint(args.model, offline=offline_requested(args.offline)) if decflow else None
    if out is not None:
        check_json_is_no_input(out, checkpoint=checkpoint, root=dataset.root, args=args)
    meta = run_meta(args, device=device, root=dataset.root)
    if decflow:
        predictor, described = build_decflow(args, checkpoint=checkpoint, device=device, amp_dtype=amp_dtype)
    else:
        predictor, described = build_baseline(args.method)
    meta.update(described, mask=MASK_NOTE)
    results = score(predictor, dataset, args)
    return make_document(args, results, meta)


def check_arguments(args: argparse.Namespace) -> Path | None:
    """The numbers of the command line, and `--output_json` (as a Path, None without it)."""
    # the path itself before any work, so that no result is lost to a bad one (its inputs later)
    return check_output(args.output_json, "--output_json") if args.output_json else None


def open_split(args: argparse.Namespace) -> FacialFlow:
    """The split of `--root` to evaluate on (its folders checked first, each problem one line)."""
    if problem := split_problem(args.root, args.split):
        raise UserError(problem)
    try:
        return FacialFlow(None, split=args.split, dataset_root=args.root)
    except UserError as error:  # the first line: the dataset's messages go on with the expected layout
        raise UserError(str(error).splitlines()[0]) from None


def check_json_is_no_input(out: Path, *, checkpoint: str | None, root: Path, args: argparse.Namespace) -> None:
    """`--output_json` is neither the checkpoint, nor its description, nor a file of the dataset."""
    check_not_an_input(
        out,
        "--output_json",
        [("checkpoint", checkpoint), ("description", checkpoint and description_path(checkpoint))],
    )
    if out.exists() and out.resolve().is_relative_to(root.resolve()):
        raise UserError(
            f"--output_json {out} is a file of the dataset (--root {args.root}): refusing to overwrite an input"
        )


def run_meta(args: argparse.Namespace, *, device: torch.device, root: Path) -> dict[str, Any]:
    """What the run was, as far as the method does not change it (build_decflow, build_baseline add theirs)."""
    return {
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


def build_decflow(
    args: argparse.Namespace, *, checkpoint: str, device: torch.device, amp_dtype: torch.dtype | None
) -> tuple[Callable, dict[str, Any]]:
    """DecFlow of `checkpoint` as a predictor, and what it is for the meta (the file hashed once)."""
    sha256 = sha256_of(checkpoint)
    spec = estimator_spec(args, checkpoint, device=device, amp_dtype=amp_dtype, pad_mode="exp", sha256=sha256)
    estimator = build_estimator(spec)
    described = {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256, **estimator.description()}
    return decflow_predictor(estimator), described


def build_baseline(method: str) -> tuple[Callable, dict[str, Any]]:
    """A classical baseline (it runs on the CPU) as a predictor, and what it is for the meta."""
    predictor = BASELINES[method]()
    described: dict[str, Any] = {"device": "cpu"}
    if hasattr(predictor, "description"):
        described.update(opencv_version=cv2.__version__, baseline=predictor.description)
    return predictor, described


def score(predictor: Callable, dataset: FacialFlow, args: argparse.Namespace) -> dict[str, Any]:
    """core.evaluation's results of `predictor` on `dataset`; a damaged file of the split (named)
    or a non-finite prediction as UserError."""
    try:
        return evaluate_predictor(
            predictor,
            dataset,
            max_pairs=args.max_pairs,
            progress=not args.no_progress,
            has_head=args.method in ("decflow", "zero"),
            batch_size=args.batch_size,
        )
    except (UserError, FileNotFoundError) as error:
        raise UserError(str(error).splitlines()[0]) from None


def make_document(args: argparse.Namespace, results: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: the results blocks, and the counts of the evaluation in `meta`."""
    for key in COUNT_KEYS:
        meta[key] = results.pop(key)
    for block in results["per_emotion"].values():
        for key in COUNT_KEYS:
            block.pop(key)
    return {
        "dataset": args.dataset,
        "split": args.split,
        "pairs": results["pairs"],
        "iters": args.iters if args.method == "decflow" else None,
        "facial": results["facial"],
        "head": results["head"],
        "expression": results["expression"],
        "ffn_protocol": results["ffn_protocol"],
        "per_emotion": results["per_emotion"],
        "meta": meta,
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    with exit_on_user_error("evaluate.py"):
        document = run(args)
    meta = document["meta"]
    method = args.method if args.method != "decflow" else f"DecFlow {meta['checkpoint']}, {args.iters} iterations"
    print(
        format_results(
            {**document, **{key: meta[key] for key in COUNT_KEYS}},
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
