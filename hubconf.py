"""torch.hub entry points.

    estimator = torch.hub.load("path/to/DecFlow", "decflow_estimator", source="local")
    out = estimator(image1, image2)   # [3, H, W] or [B, 3, H, W] RGB 0..255, any size
    out.facial, out.head, out.expression   # [B, 2, H, W], cropped back to the input size

    model = torch.hub.load("path/to/DecFlow", "decflow", source="local")
    out = model(image1, image2, iters=12, test_mode=True)   # H, W multiples of 8 and >= 128

`pretrained=True` (the default) loads the FacialFlowNet authors' release (registry name
`decflow-facialflownet`): the repository's `checkpoints/decflow-facialflownet.pth` when it
is there and verified, else the copy in torch.hub's cache (`torch.hub.get_dir()/checkpoints`),
downloaded and verified on first use (not with DECFLOW_OFFLINE=1). `pretrained=False`
gives the untrained network, with a warning that its weights (and flows) are random.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

from core.checkpoint import load_checkpoint
from core.defaults import CHECKPOINTS_DIR, DEMO_ITERS
from core.estimators import EstimatorSpec, build_estimator
from core.inference import Estimator, resolve_device, resolve_inference_precision
from core.network import DecFlow
from core.weights import REGISTRY, RELEASE, ensure, offline_requested, status

dependencies = ["torch", "torchvision", "einops", "tqdm"]

REPO = Path(__file__).resolve().parent
# Said once per calling place (Python's default warning filter) by `pretrained=False` models.
UNTRAINED_WARNING = "DecFlow with pretrained=False: its weights are random, so are its flows (load trained weights)"


def _release_weights(*, progress: bool = True) -> Path:
    """The release's file: the repository's checkpoints/ copy when it is verified, else torch.hub's
    cached copy (downloaded and verified when absent). An unverified repository copy is said."""
    entry = REGISTRY[RELEASE]
    local = REPO / CHECKPOINTS_DIR
    state = status(entry, local)
    if state == "verified":
        return entry.destination(local)
    if state != "missing":
        print(
            f"note: {entry.destination(local)} is not the verified release ({state}): using torch.hub's copy",
            file=sys.stderr,
            flush=True,
        )
    return ensure(entry, folder=f"{torch.hub.get_dir()}/checkpoints", offline=offline_requested(), progress=progress)


def decflow(pretrained: bool = True, progress: bool = True) -> DecFlow:
    """DecFlow in the paper's configuration, in eval mode; with `pretrained`, the authors'
    released weights (see the module doc; loaded strictly, weights_only).

    Call it in test mode: `model(image1, image2, iters=12, test_mode=True)` returns a
    `DecFlowOutput` (`facial`, `head`, `expression`: `[B, 2, H, W]`; `facial_low`, `head_low`:
    `[B, 2, H/8, W/8]`) for images `[B, 3, H, W]`, RGB 0..255, H and W multiples of 8 and at
    least 128 px. Without `test_mode=True` it returns what training uses, even in eval mode:
    two lists of `iters` predictions (facial, head). For images of any size, padded and
    cropped back, use `decflow_estimator`.
    """
    model = DecFlow()
    if pretrained:
        load_checkpoint(model, _release_weights(progress=progress), strict=True, verbose=False)
    else:
        warnings.warn(UNTRAINED_WARNING, UserWarning, stacklevel=2)
    return model.eval()


def decflow_estimator(
    pretrained: bool = True,
    progress: bool = True,
    *,
    iters: int = DEMO_ITERS,
    device: str | None = None,
    mixed_precision: bool | None = None,
    amp_dtype: str | None = None,
    alternate_corr: bool = False,
) -> Estimator:
    """The `FlowEstimator` that get_flow.py runs: `estimator(image1, image2)` takes images
    `[3, H, W]` or `[B, 3, H, W]`, RGB 0..255, of any size (padded symmetrically to multiples
    of 8 and at least 128 px, the flows cropped back) and returns a `DecFlowOutput` in test
    mode. `device` (default: cuda when available), `mixed_precision` (default: on for CUDA),
    `amp_dtype` ("float16", "bfloat16") and `iters` (default 24) as get_flow.py's options."""
    resolved = resolve_device(device)
    if not pretrained:
        warnings.warn(UNTRAINED_WARNING, UserWarning, stacklevel=2)
    spec = EstimatorSpec(
        weights=_release_weights(progress=progress) if pretrained else None,
        iters=iters,
        device=resolved,
        amp_dtype=resolve_inference_precision(mixed_precision, amp_dtype, resolved),
        alternate_corr=alternate_corr,
        pad_mode="symmetric",
    )
    return build_estimator(spec)
