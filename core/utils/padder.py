"""Pad images to sizes the network accepts and crop flow back to the input size."""

from __future__ import annotations

import torch
from torch.nn import functional as F

PAD_MODES = ("symmetric", "exp")


class InputPadder:
    """Replicate-pad `[..., H, W]` tensors so that both sides are multiples of `divisor`.

    mode "symmetric": split the padding evenly on both sides of each axis (the reference
    demo; the reference calls it "sintel"). mode "exp": width split evenly, height padded
    at the bottom only (the reference evaluation). `min_side` additionally pads small
    images up to that many pixels (DecFlow needs 128 px per side).
    """

    def __init__(
        self, dims: torch.Size | tuple[int, ...], *, mode: str = "symmetric", divisor: int = 8, min_side: int = 0
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
