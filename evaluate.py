"""Evaluate DecFlow or a classical baseline on FacialFlowNet.

    python evaluate.py --model checkpoints/decflow-facialflownet.pth --dataset facialflow
    python evaluate.py --method dis --dataset facialflow --split test --output_json dis.json

Two protocols are reported:

* **masked** (facial, head and expression flow): per pair, the end-point error (EPE)
  and the fraction of pixels with EPE under 1, 3 and 5 px, over the face mask pixels
  whose ground truth is valid; then the mean over pairs. Expression flow is
  facial - head, compared with gt facial - gt head.
* **ffn_protocol** (facial flow only): the reference `validate_facialflow` of the
  authors, so numbers compare with the paper: per pair, the sum of the per-pixel EPE over
  the *whole* image divided by the number of mask pixels, and the number of pixels
  (whole image) under 1/3/5 px divided by the number of mask pixels (these can exceed
  1); network inputs padded in mode "exp"; then the mean over pairs.

Ground-truth pixels that are NaN or inf in the files (the dataset marks them, see
`core.datasets.nonfinite_ground_truth`) are left out of every metric: of the masked
ones as invalid pixels, of ffn_protocol's whole-image sums and counts and of its mask
pixel count (the denominator stays "mask pixels", those with finite ground truth). A
pair left with no pixel to score drops out of that mean; the report says how many
pairs each mean is over and how many ground-truth pixels were not finite.

The evaluation core is importable (e.g. for validation during training)::

    from evaluate import evaluate_facialflow
    results = evaluate_facialflow(model, dataset, iters=32, device=device)
    results["facial"]["epe"], results["ffn_protocol"]["epe"]

Pieces: `masked_metrics`, `ffn_protocol_metrics` (one pair, torch tensors),
`DecFlowPredictor`, `ZeroFlowPredictor`, `OpenCVFlowPredictor` (callables mapping a pair
to flows), `evaluate_predictor` (the loop over a dataset), `format_results` (table).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from core.checkpoint import default_checkpoint, load_checkpoint
from core.datasets import FacialFlow, nonfinite_ground_truth
from core.loss import THRESHOLDS, endpoint_metrics
from core.inference import FlowEstimator
from core.network import DecFlow
from core.precision import AMP_DTYPES, parse_amp_dtype, precision_name, resolve_amp_dtype

METRIC_KEYS = ("epe", *(f"{t}px" for t in THRESHOLDS))
FLOW_KINDS = ("facial", "head", "expression")
METHODS = ("decflow", "zero", "dis", "farneback")
DATASETS = ("facialflow",)
SPLITS = ("train", "val", "test")
DEFAULT_ROOT = "datasets/FacialFlowNet"
DEFAULT_ITERS = 12  # the reference evaluate.py

# A prediction: facial flow [2, H, W] and head flow [2, H, W] (None: not estimated).
Prediction = tuple[torch.Tensor, "torch.Tensor | None"]


class UserError(Exception):
    """A mistake in the command line or the inputs: reported as one line, no traceback."""


# --------------------------------------------------------------------------- metrics
def endpoint_error(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-pixel end-point error `[H, W]` of flows `[2, H, W]` (computed in float32)."""
    if pred.shape != gt.shape or pred.dim() != 3 or pred.shape[0] != 2:
        raise ValueError(f"flows must both be [2, H, W], got {tuple(pred.shape)} and {tuple(gt.shape)}")
    return (pred.float() - gt.float()).square().sum(dim=0).sqrt()


def masked_metrics(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> dict[str, float] | None:
    """EPE and fractions of pixels under 1/3/5 px over the pixels where `mask` is nonzero.

    `pred`, `gt`: `[2, H, W]`; `mask`: `[H, W]` (bool or numbers; nonzero = counted).
    Returns None when the mask is empty (the pair has no pixel to score).
    """
    selected = mask.to(pred.device) != 0
    if not bool(selected.any()):
        return None
    return endpoint_metrics(endpoint_error(pred, gt)[selected])


def ffn_protocol_metrics(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor,
                         scored: torch.Tensor | None = None) -> dict[str, float] | None:
    """The reference's per-pair facial-flow numbers (see the module doc).

    EPE summed over the whole image, and counts of whole-image pixels under 1/3/5 px, all
    divided by the number of nonzero mask pixels. `scored` (bool `[H, W]`, default all)
    restricts the whole image and the mask to those pixels (e.g. finite ground truth).
    Returns None when no mask pixel is scored (the reference would divide by zero).
    """
    selected = torch.ones(pred.shape[-2:], dtype=torch.bool, device=pred.device) if scored is None \
        else scored.to(pred.device)
    count = int(((mask.to(pred.device) != 0) & selected).sum())
    if count == 0:
        return None
    epe = endpoint_error(pred, gt)[selected]
    return {"epe": float(epe.sum()) / count, **{f"{t}px": float((epe < t).sum()) / count for t in THRESHOLDS}}


def mean_metrics(per_pair: Sequence[Mapping[str, float]]) -> dict[str, float] | None:
    """Mean of each metric over pairs (None when there is no pair)."""
    if not per_pair:
        return None
    return {key: float(np.mean([m[key] for m in per_pair])) for key in METRIC_KEYS}


# --------------------------------------------------------------------------- predictors
def resolve_device(name: str | None = None) -> torch.device:
    """`name` as a torch.device (default: cuda when available, else cpu); UserError if unusable."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise UserError(f"invalid --device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available on this machine (use --device cpu)")
    return device


def resolve_inference_precision(mixed_precision: bool | None, amp_dtype: str | None,
                                device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `--mixed_precision/--amp_dtype` on `device` (None: float32).

    Mixed precision is on by default for CUDA (as the reference) and off elsewhere; on a CPU
    without native bfloat16 it falls back to float32 with one line on stderr.
    """
    mixed = device.type == "cuda" if mixed_precision is None else bool(mixed_precision)
    return resolve_amp_dtype(mixed, device, parse_amp_dtype(amp_dtype), warn=lambda line: print(line, file=sys.stderr))


class DecFlowPredictor:
    """Run a DecFlow model on one pair: pad (mode `pad_mode`), infer, unpad (core.inference.FlowEstimator;
    CUDA graphs on CUDA). The model must already be on `device` and in eval mode; it runs in its own precision.
    """

    def __init__(self, model: torch.nn.Module, *, iters: int = DEFAULT_ITERS, device: torch.device | str = "cpu",
                 pad_mode: str = "exp") -> None:
        # at least the network's minimum side; FacialFlowNet frames are larger, so the
        # reference's "exp" padding is unchanged for them
        self.estimator = FlowEstimator(model, iters=iters, device=device, pad_mode=pad_mode)

    def __call__(self, image1: torch.Tensor, image2: torch.Tensor) -> Prediction:
        flows = self.estimator(image1, image2)
        return flows.facial[0], flows.head[0]


class ZeroFlowPredictor:
    """Baseline: zero flow for the face and for the head (so expression flow is zero too)."""

    def __call__(self, image1: torch.Tensor, image2: torch.Tensor) -> Prediction:
        zero = torch.zeros(2, *image1.shape[-2:])
        return zero, zero


class OpenCVFlowPredictor:
    """Baseline: OpenCV's DIS ("medium" preset) or Farneback flow between the grayscale
    frames, as facial flow; no head flow."""

    FARNEBACK = dict(pyr_scale=0.5, levels=4, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)

    def __init__(self, method: str) -> None:
        import cv2

        if method not in ("dis", "farneback"):
            raise ValueError(f"unknown OpenCV method {method!r}")
        self.method = method
        self._cv2 = cv2
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) if method == "dis" else None

    @property
    def description(self) -> str:
        if self.method == "dis":
            return "cv2.DISOpticalFlow preset MEDIUM on grayscale frames"
        return "cv2.calcOpticalFlowFarneback(" + ", ".join(f"{k}={v}" for k, v in self.FARNEBACK.items()) + ")"

    def _gray(self, image: torch.Tensor) -> np.ndarray:
        rgb = image.permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).cpu().numpy()
        return self._cv2.cvtColor(np.ascontiguousarray(rgb), self._cv2.COLOR_RGB2GRAY)

    def __call__(self, image1: torch.Tensor, image2: torch.Tensor) -> Prediction:
        gray1, gray2 = self._gray(image1), self._gray(image2)
        if self._dis is not None:
            flow = self._dis.calc(gray1, gray2, None)
        else:
            flow = self._cv2.calcOpticalFlowFarneback(gray1, gray2, None, **self.FARNEBACK)
        return torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32)).permute(2, 0, 1), None


# --------------------------------------------------------------------------- evaluation loop
def _emotion_of(dataset: Any, index: int) -> str:
    while isinstance(dataset, torch.utils.data.Subset):  # e.g. a validation subset during training
        dataset, index = dataset.dataset, dataset.indices[index]
    info = getattr(dataset, "extra_info", None)
    if info is None:
        return "all"
    entry = info[index]
    return str(getattr(entry, "emotion", entry[0] if isinstance(entry, (tuple, list)) else entry))


def _pair_metrics(facial: torch.Tensor, head: torch.Tensor | None, sample: Sequence[torch.Tensor]
                  ) -> dict[str, Any]:
    """Metric blocks of one pair by kind (None: nothing scored), `empty_mask`, and
    `nonfinite`: the number of non-finite ground-truth pixels of each flow."""
    _, _, gt_facial, gt_head, valid_facial, valid_head, mask = sample
    device = facial.device
    gt_facial, gt_head = gt_facial.to(device), gt_head.to(device)
    finite_f = ~nonfinite_ground_truth(gt_facial, valid_facial.to(device))
    finite_h = ~nonfinite_ground_truth(gt_head, valid_head.to(device))
    gt_facial, gt_head = gt_facial.nan_to_num(0.0, 0.0, 0.0), gt_head.nan_to_num(0.0, 0.0, 0.0)
    face = mask.to(device) != 0
    valid_f = face & (valid_facial.to(device) >= 0.5) & finite_f
    valid_h = face & (valid_head.to(device) >= 0.5) & finite_h
    out: dict[str, Any] = {
        "facial": masked_metrics(facial, gt_facial, valid_f),
        "ffn_protocol": ffn_protocol_metrics(facial, gt_facial, mask, scored=finite_f),
        "head": None,
        "expression": None,
        "empty_mask": not bool(face.any()),
        "nonfinite": {"facial": int((~finite_f).sum()), "head": int((~finite_h).sum())},
    }
    if head is not None:
        out["head"] = masked_metrics(head, gt_head, valid_h)
        out["expression"] = masked_metrics(facial - head, gt_facial - gt_head, valid_f & valid_h)
    return out


def _summarise(per_pair: Sequence[Mapping[str, Any]], has_head: bool) -> dict[str, Any]:
    summary: dict[str, Any] = {"pairs": len(per_pair)}
    scored_pairs: dict[str, int] = {}
    for kind in (*FLOW_KINDS, "ffn_protocol"):
        if kind in ("head", "expression") and not has_head:
            summary[kind] = None  # not applicable to this method
            scored_pairs[kind] = 0
            continue
        scored = [p[kind] for p in per_pair if p[kind] is not None]
        summary[kind] = mean_metrics(scored)
        scored_pairs[kind] = len(scored)
    summary["pairs_without_mask"] = sum(p["empty_mask"] for p in per_pair)
    summary["scored_pairs"] = scored_pairs
    summary["nonfinite_gt_pixels"] = {flow: sum(p["nonfinite"][flow] for p in per_pair) for flow in ("facial", "head")}
    return summary


def evaluate_predictor(predictor: Callable[[torch.Tensor, torch.Tensor], Prediction], dataset: Any, *,
                       max_pairs: int | None = None, progress: bool = False, has_head: bool = True
                       ) -> dict[str, Any]:
    """Score `predictor` on the pairs of a FacialFlow-like dataset.

    `dataset[i]` must give `(img1, img2, flow_facial, flow_head, valid_facial, valid_head,
    mask)` as core.datasets.FacialFlow does (images `[3, H, W]` 0..255); the emotion of a
    pair comes from `dataset.extra_info[i].emotion` when present. `predictor(img1, img2)`
    returns `(facial [2, H, W], head [2, H, W] or None)`.

    Returns `{"pairs", "facial", "head", "expression", "ffn_protocol", "pairs_without_mask",
    "scored_pairs", "nonfinite_gt_pixels", "per_emotion": {emotion: same keys}}`; each
    metric block is `{"epe", "1px", "3px", "5px"}` averaged over pairs, or None (not
    applicable / no scored pair). Pairs whose mask is empty are counted in
    `pairs_without_mask` and left out of the means; `scored_pairs[kind]` is the number of
    pairs each mean is over (to combine partial results, e.g. across processes, weight each
    block by it). `nonfinite_gt_pixels` (`{"facial", "head"}`) counts the ground-truth
    pixels that were NaN or inf, which no metric uses.
    """
    count = len(dataset) if max_pairs is None else min(len(dataset), max_pairs)
    indices: Any = range(count)
    if progress:
        indices = tqdm(indices, desc="evaluating", unit="pair", dynamic_ncols=True)
    per_pair, emotions = [], []
    for index in indices:
        sample = dataset[index]
        facial, head = predictor(sample[0], sample[1])
        per_pair.append(_pair_metrics(facial, head, sample))
        emotions.append(_emotion_of(dataset, index))
    results = _summarise(per_pair, has_head)
    groups: dict[str, list] = defaultdict(list)
    for emotion, pair in zip(emotions, per_pair):
        groups[emotion].append(pair)
    results["per_emotion"] = {emotion: _summarise(groups[emotion], has_head) for emotion in sorted(groups)}
    return results


def evaluate_facialflow(model: torch.nn.Module, dataset: Any, *, iters: int = DEFAULT_ITERS,
                        device: torch.device | str | None = None, pad_mode: str = "exp", max_pairs: int | None = None, progress: bool = False
                        ) -> dict[str, Any]:
    """Evaluate a DecFlow model (optionally DataParallel-wrapped) on `dataset`.

    Puts the model in eval mode for the evaluation and restores every module's previous
    mode afterwards (so BatchNorm layers frozen in training stay frozen). `device` defaults
    to the device of the model's parameters. See `evaluate_predictor` for the returned dict.
    """
    if device is None:
        device = next(model.parameters()).device
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        predictor = DecFlowPredictor(model, iters=iters, device=device, pad_mode=pad_mode)
        return evaluate_predictor(predictor, dataset, max_pairs=max_pairs, progress=progress)
    finally:
        for module, training in modes:
            module.training = training


# --------------------------------------------------------------------------- reporting
def _fmt(value: float | None, width: int = 9) -> str:
    return f"{'n/a':>{width}}" if value is None or not math.isfinite(value) else f"{value:>{width}.4f}"


def _pair_count(results: Mapping[str, Any]) -> str:
    """"N pairs", with the number of pairs each mean is over where that is fewer."""
    pairs = results["pairs"]
    fewer = [f"{kind} {count}" for kind, count in (results.get("scored_pairs") or {}).items()
             if count != pairs and (results.get(kind) is not None or kind in ("facial", "ffn_protocol"))]
    return f"{pairs} pairs" + (f" (scored: {', '.join(fewer)})" if fewer else "")


def format_results(results: Mapping[str, Any], title: str = "") -> str:
    """A readable table of `results` (as returned by `evaluate_predictor`)."""
    lines = [title] if title else []
    lines.append(f"{'':<15}{'EPE':>9}{'<1px':>9}{'<3px':>9}{'<5px':>9}")
    for kind in (*FLOW_KINDS, "ffn_protocol"):
        block = results.get(kind)
        label = "ffn_protocol*" if kind == "ffn_protocol" else kind
        if block is None:
            lines.append(f"{label:<15}{'not applicable' if kind in ('head', 'expression') else 'no scored pair':>36}")
        else:
            lines.append(f"{label:<15}" + "".join(_fmt(block[k]) for k in METRIC_KEYS))
    lines.append(f"{_pair_count(results)}; facial/head/expression: over the face mask (valid gt), "
                 "mean over pairs")
    lines.append("* reference protocol: whole-image sums / mask pixels, facial flow (values can exceed 1)")
    if results.get("pairs_without_mask"):
        lines.append(f"{results['pairs_without_mask']} pairs with an empty mask left out")
    nonfinite = results.get("nonfinite_gt_pixels") or {}
    if any(nonfinite.values()):
        lines.append(f"ground truth not finite (NaN/inf) at {nonfinite['facial']} facial and {nonfinite['head']} "
                     "head flow pixels: left out of every metric")
    per_emotion = results.get("per_emotion") or {}
    if per_emotion:
        lines.append("")
        lines.append(f"{'emotion':<15}{'pairs':>6}{'facial':>9}{'head':>9}{'expr.':>9}{'ffn':>9}   (EPE)")
        for emotion, block in per_emotion.items():
            epes = [None if block[k] is None else block[k]["epe"] for k in (*FLOW_KINDS, "ffn_protocol")]
            lines.append(f"{emotion:<15}{block['pairs']:>6}" + "".join(_fmt(e) for e in epes))
    return "\n".join(lines)


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- model loading (shared with get_flow.py)
def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that build the network and choose where/how it runs (shared with get_flow.py)."""
    group = parser.add_argument_group("model")
    group.add_argument("--num_heads", type=int, default=1, help="attention heads of GMA (default 1)")
    group.add_argument("--position_only", action="store_true", help="GMA: position-only attention")
    group.add_argument("--position_and_content", action="store_true", help="GMA: position and content attention")
    group.add_argument("--alternate_corr", action="store_true",
                       help="memory-bounded correlation (same results, slower; for large images)")
    group.add_argument("--mixed_precision", action=argparse.BooleanOptionalAction, default=None,
                       help="autocast (float16 on CUDA; bfloat16 on CPUs that have it natively, else float32 "
                            "with a warning); default: on for CUDA, off otherwise")
    group.add_argument("--amp_dtype", choices=sorted(AMP_DTYPES), default=None,
                       help="autocast dtype of --mixed_precision (default: float16 on CUDA, bfloat16 on CPU)")
    group.add_argument("--device", default=None,
                       help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)")


def load_model(args: argparse.Namespace, checkpoint: str | os.PathLike, device: torch.device,
               amp_dtype: torch.dtype | None, *, missing_hint: str = "") -> torch.nn.Module:
    """DecFlow with the options in `args`, weights from `checkpoint` (strict), on `device`,
    in eval mode. Problems become UserError (one line)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found" + (f": {missing_hint}" if missing_hint else ""))
    if args.num_heads < 1:
        raise UserError(f"--num_heads must be >= 1, got {args.num_heads}")
    if args.position_only and args.position_and_content:
        raise UserError("--position_only and --position_and_content are mutually exclusive")
    model = DecFlow(num_heads=args.num_heads, position_only=args.position_only,
                    position_and_content=args.position_and_content, mixed_precision=amp_dtype is not None,
                    amp_dtype=amp_dtype, alternate_corr=args.alternate_corr)
    try:
        load_checkpoint(model, path, strict=True, verbose=False)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(str(error).replace("\n", " ")) from None
    return model.to(device).eval()


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"num_heads": args.num_heads, "position_only": args.position_only,
            "position_and_content": args.position_and_content, "alternate_corr": args.alternate_corr}


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


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """`path` as a Path if a file can be written there (missing folders are created later);
    otherwise a UserError naming `flag` and the path."""
    out = Path(path)
    if out.is_dir():
        raise UserError(f"{flag} {out} is a directory (give a file name, e.g. {out / 'results.json'})")
    if out.exists() and not os.access(out, os.W_OK):
        raise UserError(f"{flag} {out}: the file is not writable")
    folder = next(parent for parent in out.absolute().parents if parent.exists())
    if not folder.is_dir():
        raise UserError(f"{flag} {out}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {out}: folder {folder} is not writable")
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate DecFlow (or a classical baseline) on FacialFlowNet: EPE and 1/3/5 px accuracy "
                    "of facial, head and expression flow over the face mask, plus the reference protocol.")
    parser.add_argument("--model", default=None,
                        help="DecFlow checkpoint (default: the authors' release, else stage 2 of the seed training, "
                             "in checkpoints/; see checkpoints/README.md)")
    parser.add_argument("--method", choices=METHODS, default="decflow",
                        help="decflow (default), or a baseline: zero flow, OpenCV DIS, OpenCV Farneback")
    parser.add_argument("--dataset", choices=DATASETS, default="facialflow")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"FacialFlowNet folder (default {DEFAULT_ROOT})")
    parser.add_argument("--iters", type=int, default=DEFAULT_ITERS,
                        help=f"refinement iterations (default {DEFAULT_ITERS}, as the reference)")
    parser.add_argument("--max_pairs", type=int, default=None, help="evaluate only the first N pairs")
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
    if args.output_json:  # before any work, so that no result is lost to a bad path
        check_output_file(args.output_json, "--output_json")
    decflow = args.method == "decflow"
    checkpoint = args.model
    if decflow and not checkpoint:
        try:
            checkpoint = str(default_checkpoint())
        except FileNotFoundError as error:
            raise UserError(f"--model CHECKPOINT is required for --method decflow: {error}") from None
        print(f"checkpoint: {checkpoint} (default; --model PATH chooses another)", flush=True)
    device = resolve_device(args.device)
    amp_dtype = resolve_inference_precision(args.mixed_precision, args.amp_dtype, device) if decflow else None

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

    meta: dict[str, Any] = {"method": args.method, "checkpoint": None, "checkpoint_sha256": None,
                            "iters": None, "padding_mode": None, "precision": "float32",
                            "device": str(device), "torch_version": torch.__version__,
                            "numpy_version": np.__version__, "python_version": platform.python_version(),
                            "dataset_root": str(root), "max_pairs": args.max_pairs}
    if decflow:
        model = load_model(args, checkpoint, device, amp_dtype)
        predictor: Callable = DecFlowPredictor(model, iters=args.iters, device=device, pad_mode="exp")
        meta.update(checkpoint=str(checkpoint), checkpoint_sha256=sha256_of(checkpoint), iters=args.iters,
                    padding_mode="exp", precision=precision_name(amp_dtype), model_options=model_options(args))
    elif args.method == "zero":
        predictor = ZeroFlowPredictor()
        meta["device"] = "cpu"
    else:
        import cv2

        predictor = OpenCVFlowPredictor(args.method)
        meta.update(device="cpu", opencv_version=cv2.__version__, baseline=predictor.description)
    meta["mask"] = ("masked metrics: face-mask pixels (mask != 0) with valid ground truth (finite and "
                    "|u|,|v| < 1000; expression: facial and head valid); ffn_protocol: whole-image sums over "
                    "pixels with finite ground truth, mask != 0 pixels with finite ground truth as denominator")

    results = evaluate_predictor(predictor, dataset, max_pairs=args.max_pairs, progress=not args.no_progress,
                                 has_head=args.method in ("decflow", "zero"))
    meta["pairs_without_mask"] = results.pop("pairs_without_mask")
    meta["scored_pairs"] = results.pop("scored_pairs")
    meta["nonfinite_gt_pixels"] = results.pop("nonfinite_gt_pixels")
    for block in results["per_emotion"].values():
        for key in ("pairs_without_mask", "scored_pairs", "nonfinite_gt_pixels"):
            block.pop(key)
    return {"dataset": args.dataset, "split": args.split, "pairs": results["pairs"],
            "iters": args.iters if decflow else None,
            "facial": results["facial"], "head": results["head"], "expression": results["expression"],
            "ffn_protocol": results["ffn_protocol"], "per_emotion": results["per_emotion"], "meta": meta}


def main(args: argparse.Namespace) -> dict[str, Any]:
    try:
        document = run(args)
    except UserError as error:
        raise SystemExit(f"evaluate.py: error: {error}") from None
    meta = document["meta"]
    method = args.method if args.method != "decflow" else f"DecFlow {meta['checkpoint']}, {args.iters} iterations"
    print(format_results({**document, **{key: meta[key] for key in ("pairs_without_mask", "scored_pairs",
                                                                     "nonfinite_gt_pixels")}},
                         title=f"{args.dataset} {args.split} | {method} | {document['meta']['precision']} "
                               f"on {document['meta']['device']}"))
    if args.output_json:
        out = Path(args.output_json)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(_finite_or_null(document), indent=2, allow_nan=False) + "\n")
        except OSError as error:
            raise SystemExit(f"evaluate.py: error: --output_json {out}: {error.strerror or error}") from None
        print(f"results written to {out}")
    return document


if __name__ == "__main__":
    main(get_args_parser().parse_args())
