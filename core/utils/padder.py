"""The network's inputs: which ones it accepts (`check_inputs`, `check_flow_init`), and padding
images to sizes it accepts and cropping flow back to the input size (`InputPadder`)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from core.corr import CORR_LEVELS

PAD_MODES = ("symmetric", "exp")
UPSAMPLE_FACTOR = 8  # the network's recurrent work happens at 1/8 resolution
MIN_IMAGE_SIDE = UPSAMPLE_FACTOR * 2 ** (CORR_LEVELS - 1) * 2  # 128 px: coarsest level >= 2x2


def image_size_problem(
    height: int,
    width: int,
    *,
    multiple_of: int = UPSAMPLE_FACTOR,
    min_side: int = MIN_IMAGE_SIDE,
    max_side: int | None = None,
) -> str | None:
    """What is wrong with image sides `height` x `width` (None: nothing): each must be a
    multiple of `multiple_of`, at least `min_side` px and at most `max_side` px (None: no
    bound). The defaults are the network's rule (8, 128 px); an ONNX export's
    (`core.onnx_runtime.SizeRule`) is the same rule with its fixed bounds."""
    if height % multiple_of or width % multiple_of:
        return f"image sides must be multiples of {multiple_of}"
    if min(height, width) < min_side:
        return f"image sides must be at least {min_side} px for the {CORR_LEVELS}-level correlation pyramid"
    if max_side is not None and max(height, width) > max_side:
        return f"image sides must be at most {max_side} px"
    return None


def check_inputs(image1: torch.Tensor, image2: torch.Tensor) -> None:
    """Raise ValueError unless both images are `[B, 3, H, W]` of one shape, H, W % 8 == 0, >= 128."""
    for name, image in (("image1", image1), ("image2", image2)):
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"{name} must be [B, 3, H, W] RGB, got shape {tuple(image.shape)}")
        if image.dtype not in (torch.float32, torch.uint8):
            raise ValueError(
                f"{name} must be float32 (or uint8) RGB in 0..255, got {image.dtype}; convert it with .float()"
            )
        if image.is_floating_point() and not bool(torch.isfinite(image).all()):
            raise ValueError(f"{name} holds {int((~torch.isfinite(image)).sum())} non-finite values (NaN/inf)")
    if image1.shape != image2.shape:
        raise ValueError(f"image1 and image2 differ in shape: {tuple(image1.shape)} vs {tuple(image2.shape)}")
    problem = image_size_problem(*image1.shape[-2:])
    if problem:
        raise ValueError(f"{problem} (pad with core.utils.padder.InputPadder), got shape {tuple(image1.shape)}")


def check_flow_init(
    flow_init: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None, image_shape: torch.Size
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """`flow_init` as (facial start, head start); ValueError unless each is a finite
    `[B, 2, H/8, W/8]` (or None)."""
    batch, _, height, width = image_shape
    shape = (batch, 2, height // UPSAMPLE_FACTOR, width // UPSAMPLE_FACTOR)
    inits = tuple(flow_init) if isinstance(flow_init, (tuple, list)) else (flow_init, flow_init)
    if len(inits) != 2:
        raise ValueError(f"flow_init must be one tensor or a (facial, head) pair, got {len(inits)} tensors")
    for init in inits:
        if init is not None and tuple(init.shape) != shape:
            raise ValueError(f"flow_init must be [B, 2, H/8, W/8] = {shape}, got {tuple(init.shape)}")
        if init is not None and not bool(torch.isfinite(init).all()):
            raise ValueError(f"flow_init holds {int((~torch.isfinite(init)).sum())} non-finite values (NaN/inf)")
    return inits[0], inits[1]


class InputPadder:
    """Replicate-pad `[..., H, W]` tensors so that both sides are multiples of `divisor`.

    mode "symmetric": split the padding evenly on both sides of each axis (the reference
    demo; the reference calls it "sintel"). mode "exp": width split evenly, height padded
    at the bottom only (the reference evaluation). `min_side` additionally pads small
    images up to that many pixels (DecFlow needs 128 px per side).
    """

    def __init__(
        self,
        dims: torch.Size | tuple[int, ...],
        *,
        mode: str = "symmetric",
        divisor: int = UPSAMPLE_FACTOR,
        min_side: int = 0,
    ) -> None:
        if mode not in PAD_MODES:
            raise ValueError(f"pad mode must be one of {PAD_MODES}, got {mode!r}")
        self.height, self.width = int(dims[-2]), int(dims[-1])
        pad_h = self._padding(self.height, divisor, min_side)
        pad_w = self._padding(self.width, divisor, min_side)
        top = pad_h // 2 if mode == "symmetric" else 0
        # F.pad order: (left, right, top, bottom)
        self.padding = (pad_w // 2, pad_w - pad_w // 2, top, pad_h - top)

    @staticmethod
    def _padding(size: int, divisor: int, min_side: int) -> int:
        target = max(size, min_side)
        return -(-target // divisor) * divisor - size

    @property
    def padded_shape(self) -> tuple[int, int]:
        left, right, top, bottom = self.padding
        return self.height + top + bottom, self.width + left + right

    def pad(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        return [F.pad(x, self.padding, mode="replicate") for x in inputs]

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        left, _, top, _ = self.padding
        return x[..., top : top + self.height, left : left + self.width]
