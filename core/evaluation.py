"""Scoring flow on FacialFlowNet: metrics, the authors' protocol, the evaluation loop, baselines.

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

Used by evaluate.py and by train.py's validation::

    from core.evaluation import evaluate_facialflow
    results = evaluate_facialflow(model, dataset, iters=32, device=device)
    results["facial"]["epe"], results["ffn_protocol"]["epe"]

Pieces: `masked_metrics`, `ffn_protocol_metrics` (one pair, torch tensors),
`decflow_predictor` (a core.inference.Estimator as a predictor) and the `BASELINES`
(callables mapping a batch of pairs to flows), `evaluate_predictor` (the loop over a
dataset, `batch_size` pairs of one size at a time), `format_results` (table).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch

from core.datasets import nonfinite_ground_truth
from core.defaults import ITERS
from core.errors import UserError
from core.inference import Estimator, FlowEstimator
from core.loss import THRESHOLDS, endpoint_metrics
from core.parallel import unwrap
from core.utils.batching import batches_of_one_size
from core.utils.progress import progress_bar

METRIC_KEYS = ("epe", *(f"{t}px" for t in THRESHOLDS))
FLOW_KINDS = ("facial", "head", "expression")

# A prediction for a batch of pairs: facial flow [B, 2, H, W] and head flow [B, 2, H, W] (None: not estimated).
Prediction = tuple[torch.Tensor, "torch.Tensor | None"]
# Images [B, 3, H, W] (RGB, 0..255) of the first and second frames -> their Prediction.
Predictor = Callable[[torch.Tensor, torch.Tensor], Prediction]


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


def ffn_protocol_metrics(
    pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, scored: torch.Tensor | None = None
) -> dict[str, float] | None:
    """The reference's per-pair facial-flow numbers (see the module doc).

    EPE summed over the whole image, and counts of whole-image pixels under 1/3/5 px, all
    divided by the number of nonzero mask pixels. `scored` (bool `[H, W]`, default all)
    restricts the whole image and the mask to those pixels (e.g. finite ground truth).
    Returns None when no mask pixel is scored (the reference would divide by zero).
    """
    selected = (
        torch.ones(pred.shape[-2:], dtype=torch.bool, device=pred.device) if scored is None else scored.to(pred.device)
    )
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


def decflow_predictor(estimator: Estimator) -> Predictor:
    """DecFlow's facial and head flow, as the estimator pads, runs and crops them."""

    def predict(image1: torch.Tensor, image2: torch.Tensor) -> Prediction:
        flows = estimator(image1, image2)
        return flows.facial, flows.head

    return predict


class ZeroFlowPredictor:
    """Baseline: zero flow for the face and for the head (so expression flow is zero too)."""

    def __call__(self, image1: torch.Tensor, image2: torch.Tensor) -> Prediction:
        zero = torch.zeros(image1.shape[0], 2, *image1.shape[-2:])
        return zero, zero


class OpenCVFlowPredictor:
    """Baseline: OpenCV's DIS ("medium" preset) or Farneback flow between the grayscale
    frames, as facial flow; no head flow."""

    FARNEBACK = dict(pyr_scale=0.5, levels=4, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)

    def __init__(self, method: str) -> None:
        if method not in ("dis", "farneback"):
            raise ValueError(f"unknown OpenCV method {method!r}")
        self.method = method
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) if method == "dis" else None

    @property
    def description(self) -> str:
        if self.method == "dis":
            return "cv2.DISOpticalFlow preset MEDIUM on grayscale frames"
        return "cv2.calcOpticalFlowFarneback(" + ", ".join(f"{k}={v}" for k, v in self.FARNEBACK.items()) + ")"

    def _gray(self, image: torch.Tensor) -> np.ndarray:
        rgb = image.permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).cpu().numpy()
        return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)

    def _flow(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        gray1, gray2 = self._gray(image1), self._gray(image2)
        if self._dis is not None:
            flow = self._dis.calc(gray1, gray2, None)
        else:
            flow = cv2.calcOpticalFlowFarneback(gray1, gray2, None, **self.FARNEBACK)
        return torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32)).permute(2, 0, 1)  # [2, H, W]

    def __call__(self, image1: torch.Tensor, image2: torch.Tensor) -> Prediction:
        return torch.stack([self._flow(first, second) for first, second in zip(image1, image2)]), None


# --------------------------------------------------------------------------- evaluation loop
def _emotion_of(dataset: Any, index: int) -> str:
    while isinstance(dataset, torch.utils.data.Subset):  # e.g. a validation subset during training
        dataset, index = dataset.dataset, dataset.indices[index]
    info = getattr(dataset, "extra_info", None)
    if info is None:
        return "all"
    entry = info[index]
    return str(getattr(entry, "emotion", entry[0] if isinstance(entry, (tuple, list)) else entry))


def _pair_label(dataset: Any, index: int) -> str:
    """`pair i (first frame -> second frame)` where the dataset knows its files."""
    label = f"pair {index}"
    while isinstance(dataset, torch.utils.data.Subset):
        dataset, index = dataset.dataset, dataset.indices[index]
    images = getattr(dataset, "image_list", None)
    return f"{label} ({images[index][0]} -> {images[index][1]})" if images is not None else label


def _pair_metrics(facial: torch.Tensor, head: torch.Tensor | None, sample: Sequence[torch.Tensor]) -> dict[str, Any]:
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


def evaluate_predictor(
    predictor: Predictor,
    dataset: Any,
    *,
    max_pairs: int | None = None,
    progress: bool = False,
    has_head: bool = True,
    batch_size: int = 1,
) -> dict[str, Any]:
    """Score `predictor` on the pairs of a FacialFlow-like dataset.

    `dataset[i]` must give `(img1, img2, flow_facial, flow_head, valid_facial, valid_head,
    mask)` as core.datasets.FacialFlow does (images `[3, H, W]` 0..255); the emotion of a
    pair comes from `dataset.extra_info[i].emotion` when present. `predictor(img1, img2)`
    takes up to `batch_size` consecutive pairs of one size at once (images `[B, 3, H, W]`)
    and returns `(facial [B, 2, H, W], head [B, 2, H, W] or None)`; the metrics do not depend
    on the batch.

    Returns `{"pairs", "facial", "head", "expression", "ffn_protocol", "pairs_without_mask",
    "scored_pairs", "nonfinite_gt_pixels", "per_emotion": {emotion: same keys}}`; each
    metric block is `{"epe", "1px", "3px", "5px"}` averaged over pairs, or None (not
    applicable / no scored pair). Pairs whose mask is empty are counted in
    `pairs_without_mask` and left out of the means; `scored_pairs[kind]` is the number of
    pairs each mean is over (to combine partial results, e.g. across processes, weight each
    block by it). `nonfinite_gt_pixels` (`{"facial", "head"}`) counts the ground-truth
    pixels that were NaN or inf, which no metric uses. A prediction that is not finite
    everywhere is never scored: UserError naming the pair.
    """
    count = len(dataset) if max_pairs is None else min(len(dataset), max_pairs)
    indices: Any = range(count)
    if progress:
        indices = progress_bar(indices, desc="evaluating", unit="pair")
    per_pair, emotions = [], []
    samples = ((index, dataset[index]) for index in indices)
    for batch in batches_of_one_size(samples, batch_size=batch_size, size=lambda item: item[1][0].shape):
        facial, head = predictor(*(torch.stack([sample[k] for _, sample in batch]) for k in (0, 1)))
        for k, (index, sample) in enumerate(batch):
            pair_facial, pair_head = facial[k], None if head is None else head[k]
            if not all(torch.isfinite(flow).all() for flow in (pair_facial, pair_head) if flow is not None):
                raise UserError(
                    f"non-finite flow (NaN or inf) predicted for {_pair_label(dataset, index)}; nothing was scored"
                )
            per_pair.append(_pair_metrics(pair_facial, pair_head, sample))
            emotions.append(_emotion_of(dataset, index))
    results = _summarise(per_pair, has_head)
    groups: dict[str, list] = defaultdict(list)
    for emotion, pair in zip(emotions, per_pair):
        groups[emotion].append(pair)
    results["per_emotion"] = {emotion: _summarise(groups[emotion], has_head) for emotion in sorted(groups)}
    return results


def evaluate_facialflow(
    model: torch.nn.Module,
    dataset: Any,
    *,
    iters: int = ITERS,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    pad_mode: str = "exp",
    max_pairs: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a DecFlow model (optionally DataParallel-wrapped) on `dataset` with a
    core.inference.FlowEstimator (autocast to `amp_dtype`, None: float32).

    Puts the model in eval mode for the evaluation and restores every module's previous
    mode afterwards (so BatchNorm layers frozen in training stay frozen). `device` defaults
    to the device of the model's parameters. See `evaluate_predictor` for the returned dict.
    """
    if device is None:
        device = next(model.parameters()).device
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        estimator = FlowEstimator(unwrap(model), iters=iters, device=device, amp_dtype=amp_dtype, pad_mode=pad_mode)
        return evaluate_predictor(decflow_predictor(estimator), dataset, max_pairs=max_pairs, progress=progress)
    finally:
        for module, training in modes:
            module.training = training


# Classical baselines by `--method` name: each builds a predictor (no model, CPU).
BASELINES: dict[str, Callable[[], Predictor]] = {
    "zero": ZeroFlowPredictor,
    "dis": lambda: OpenCVFlowPredictor("dis"),
    "farneback": lambda: OpenCVFlowPredictor("farneback"),
}


# --------------------------------------------------------------------------- reporting
def _fmt(value: float | None, width: int = 9) -> str:
    return f"{'n/a':>{width}}" if value is None or not math.isfinite(value) else f"{value:>{width}.4f}"


def _pair_count(results: Mapping[str, Any]) -> str:
    """ "N pairs", with the number of pairs each mean is over where that is fewer."""
    pairs = results["pairs"]
    fewer = [
        f"{kind} {count}"
        for kind, count in (results.get("scored_pairs") or {}).items()
        if count != pairs and (results.get(kind) is not None or kind in ("facial", "ffn_protocol"))
    ]
    return f"{pairs} pairs" + (f" (scored: {', '.join(fewer)})" if fewer else "")


def format_results(results: Mapping[str, Any], title: str = "") -> str:
    """A readable table of `results` (as returned by `evaluate_predictor`)."""
    lines = [title] if title else []
    for kind in (*FLOW_KINDS, "ffn_protocol"):
        if kind == FLOW_KINDS[0]:
            lines.append(f"{'':<15}{'EPE':>9}{'<1px':>9}{'<3px':>9}{'<5px':>9}")
        elif kind == "ffn_protocol":  # not accuracies: its own header, so that it cannot be read as such
            lines.append(f"{'':<15}{'EPE sum':>9}{'1px cnt':>9}{'3px cnt':>9}{'5px cnt':>9}   (/ mask pixels)")
        block = results.get(kind)
        label = "ffn_protocol*" if kind == "ffn_protocol" else kind
        if block is None:
            lines.append(f"{label:<15}{'not applicable' if kind in ('head', 'expression') else 'no scored pair':>36}")
        else:
            lines.append(f"{label:<15}" + "".join(_fmt(block[k]) for k in METRIC_KEYS))
    lines.append(f"{_pair_count(results)}; facial/head/expression: over the face mask (valid gt), mean over pairs")
    lines.append(
        "* reference protocol, facial flow: whole-image EPE sum and counts of pixels under 1/3/5 px, each "
        "divided by the mask pixels (not accuracies: values can exceed 1)"
    )
    if results.get("pairs_without_mask"):
        lines.append(f"{results['pairs_without_mask']} pairs with an empty mask left out")
    nonfinite = results.get("nonfinite_gt_pixels") or {}
    if any(nonfinite.values()):
        lines.append(
            f"ground truth not finite (NaN/inf) at {nonfinite['facial']} facial and {nonfinite['head']} "
            "head flow pixels: left out of every metric"
        )
    per_emotion = results.get("per_emotion") or {}
    if per_emotion:
        lines.append("")
        lines.append(f"{'emotion':<15}{'pairs':>6}{'facial':>9}{'head':>9}{'expr.':>9}{'ffn':>9}   (EPE)")
        for emotion, block in per_emotion.items():
            epes = [None if block[k] is None else block[k]["epe"] for k in (*FLOW_KINDS, "ffn_protocol")]
            lines.append(f"{emotion:<15}{block['pairs']:>6}" + "".join(_fmt(e) for e in epes))
    return "\n".join(lines)
