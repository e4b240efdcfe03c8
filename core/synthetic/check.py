"""Checking the ground truth: backward warping and the warp error on face pixels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from core.synthetic.texture import Array
from core.synthetic.writer import SPLITS
from core.utils import flow_io


def backward_warp(image: Array, flow: Array) -> tuple[Array, Array]:
    """Sample ``image`` at ``p + flow(p)`` (bilinear).

    Returns:
        ``(warped, inside)``: float32 warped image and a bool map of the pixels whose
        target lies inside the image.
    """
    h, w = flow.shape[:2]
    py, px = np.mgrid[0:h, 0:w].astype(np.float32)
    mx, my = px + flow[..., 0], py + flow[..., 1]
    warped = cv2.remap(
        image.astype(np.float32), mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    return warped, inside


def warp_error(frame1: Array, frame2: Array, flow: Array, region: Array) -> float:
    """Mean absolute difference (0..255) between ``frame1`` and ``frame2`` warped back by ``flow``.

    Only pixels of ``region`` whose target is inside ``frame2`` count.
    """
    warped, inside = backward_warp(frame2, flow)
    sel = region & inside
    if not sel.any():
        raise ValueError("no pixel of the region maps inside the second frame")
    return float(np.abs(warped[sel] - frame1.astype(np.float32)[sel]).mean())


def erode(mask: Array, pixels: int) -> Array:
    """Erode a bool mask by ``pixels`` (drops anti-aliased and occlusion boundaries)."""
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel).astype(bool)


def verify(root: str | Path, splits: Sequence[str] = SPLITS) -> dict[str, float]:
    """Mean warp error on eroded face masks for facial and head flow, and with zero flow.

    Facial flow is checked on ``image/facial`` frames, head flow on ``image/head`` frames.
    """
    root = Path(root)
    errors: dict[str, list[float]] = {"facial": [], "head": [], "facial_zero": [], "head_zero": []}
    for split in splits:
        for flow_path in sorted((root / "flow" / "facial" / split).glob("*/*/*.flo")):
            rel = flow_path.relative_to(root / "flow" / "facial")
            mask = erode(np.load(root / "mask" / rel.with_suffix(".npy")), 2)
            nxt = f"{int(rel.stem) + 1:04d}.jpg"
            for kind in ("facial", "head"):
                img_dir = root / "image" / kind / rel.parent
                f1 = flow_io.read_image(img_dir / rel.with_suffix(".jpg").name)
                f2 = flow_io.read_image(img_dir / nxt)
                flow = flow_io.read_flo(root / "flow" / kind / rel)
                errors[kind].append(warp_error(f1, f2, flow, mask))
                errors[f"{kind}_zero"].append(warp_error(f1, f2, np.zeros_like(flow), mask))
    if not errors["facial"]:
        raise ValueError(f"no flows found under {root / 'flow' / 'facial'}")
    return {k: float(np.mean(v)) for k, v in errors.items()}
