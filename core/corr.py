"""All-pairs correlation pyramid and its windowed lookup.

For every pixel of image 1 (at 1/8 resolution) the volume holds the dot product with
every pixel of image 2, divided by sqrt(channels); coarser levels average-pool the
image-2 axes. A lookup samples a (2r+1)x(2r+1) window around each coordinate at every
level with bilinear interpolation (zeros outside).

Channel order of one level's window: index `a * (2r+1) + b`, where `a` indexes the offset
added to x and `b` the offset added to y (the authors' checkpoints were trained with
this order). Levels are concatenated finest first.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch.nn import functional as F


def coords_grid(batch: int, height: int, width: int, *, device: torch.device | None = None) -> torch.Tensor:
    """Pixel-centre coordinates `[B, 2, H, W]`, channel 0 = x (column), channel 1 = y (row)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                            torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([xs, ys]).unsqueeze(0).expand(batch, -1, -1, -1).contiguous()


def window_offsets(radius: int, *, device: torch.device | None = None) -> torch.Tensor:
    """`[2r+1, 2r+1, 2]` (dx, dy) offsets; the first axis moves x, the second y."""
    steps = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    along_x, along_y = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([along_x, along_y], dim=-1)


def sample_windows(volume: torch.Tensor, centres: torch.Tensor, radius: int) -> torch.Tensor:
    """Bilinearly sample windows of `volume` around `centres`.

    volume:  `[N, C, H2, W2]` (e.g. one correlation map per query pixel, or one feature map)
    centres: `[N, M, 2]` window centres (x, y) in pixels of `volume`
    returns  `[N, C, M, (2r+1)**2]`
    """
    n, k, _ = centres.shape
    height, width = volume.shape[-2:]
    side = 2 * radius + 1
    points = centres[:, :, None, None, :] + window_offsets(radius, device=centres.device)
    # align_corners=True: pixel i sits at -1 + 2 i / (size - 1); sizes of 1 are rejected upstream.
    scale = torch.tensor([2.0 / (width - 1), 2.0 / (height - 1)], device=centres.device)
    grid = (points * scale - 1).reshape(n, k * side, side, 2)
    sampled = F.grid_sample(volume, grid.to(volume.dtype), mode="bilinear", padding_mode="zeros",
                            align_corners=True)  # [N, C, K*side, side]
    return sampled.reshape(n, volume.shape[1], k, side * side)


def check_pyramid_size(height: int, width: int, num_levels: int) -> None:
    """The coarsest level must be at least 2x2: the sampling grid divides by (side - 1)."""
    min_side = 2 ** (num_levels - 1) * 2
    if min(height, width) < min_side:
        raise ValueError(
            f"feature maps of {height}x{width} are too small for a {num_levels}-level pyramid: "
            f"each side must be at least {min_side} (image sides >= {8 * min_side} px)")


def _centres(coords: Sequence[torch.Tensor]) -> torch.Tensor:
    """K coordinate fields `[B, 2, h, w]` -> `[B, h*w, K, 2]` window centres."""
    return torch.stack([c.permute(0, 2, 3, 1).flatten(1, 2) for c in coords], dim=2)


def _as_fields(lookup: torch.Tensor, batch: int, height: int, width: int) -> list[torch.Tensor]:
    """`[B, h*w, K, C]` lookups -> K x `[B, C, h, w]`."""
    lookup = lookup.reshape(batch, height, width, lookup.shape[2], -1).permute(3, 0, 4, 1, 2)
    return list(lookup.unbind(0))


class CorrBlock:
    """Correlation pyramid of two feature maps, looked up around coordinate fields."""

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, *, num_levels: int = 4, radius: int = 4) -> None:
        # fmap1, fmap2: [B, D, h, w] float32
        batch, dim, height, width = fmap1.shape
        check_pyramid_size(height, width, num_levels)
        self.num_levels = num_levels
        self.radius = radius
        self.shape = (batch, height, width)
        volume = torch.matmul(fmap1.flatten(2).transpose(1, 2), fmap2.flatten(2))  # [B, h*w, h*w]
        volume = volume.reshape(batch * height * width, 1, height, width).div_(math.sqrt(dim))  # in place: no copy
        self.pyramid = [volume]
        for _ in range(num_levels - 1):
            volume = F.avg_pool2d(volume, 2, stride=2)
            self.pyramid.append(volume)

    @property
    def out_channels(self) -> int:
        return self.num_levels * (2 * self.radius + 1) ** 2

    def __call__(self, coords: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Look up `[B, 2, h, w]` coordinates -> `[B, out_channels, h, w]` float32.

        Given a list of coordinate fields, looks them all up in one pass per level and
        returns a list (the decoder heads share the pyramid).
        """
        fields = [coords] if isinstance(coords, torch.Tensor) else list(coords)
        batch, height, width = self.shape
        centres = _centres(fields).flatten(0, 1)  # [B*h*w, K, 2]: one volume per query pixel
        levels = [sample_windows(volume, centres / 2 ** level, self.radius)[:, 0]  # [B*h*w, K, S]
                  for level, volume in enumerate(self.pyramid)]
        out = torch.cat(levels, dim=-1).float().reshape(batch, height * width, len(fields), -1)
        results = _as_fields(out, batch, height, width)
        return results[0] if isinstance(coords, torch.Tensor) else results


class AlternateCorrBlock:
    """Memory-bounded correlation: the same values as CorrBlock, computed on the fly.

    Pooling the correlation volume over image-2 axes equals correlating with pooled image-2
    features, and bilinear sampling commutes with the dot product; so each lookup samples
    the pooled feature maps of image 2 and correlates them with image-1 features, a chunk
    of query pixels at a time. Nothing of size (h*w)^2 is ever allocated.
    """

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, *, num_levels: int = 4, radius: int = 4,
                 chunk_elements: int = 2 ** 24) -> None:
        batch, dim, height, width = fmap1.shape
        check_pyramid_size(height, width, num_levels)
        self.num_levels = num_levels
        self.radius = radius
        self.shape = (batch, height, width)
        self.chunk_elements = chunk_elements  # bound on sampled feature values held at once
        self.fmap1 = fmap1.flatten(2).transpose(1, 2) / math.sqrt(dim)  # [B, h*w, D]
        self.pyramid = [fmap2]
        for _ in range(num_levels - 1):
            self.pyramid.append(F.avg_pool2d(self.pyramid[-1], 2, stride=2))

    out_channels = CorrBlock.out_channels

    def __call__(self, coords: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        fields = [coords] if isinstance(coords, torch.Tensor) else list(coords)
        batch, height, width = self.shape
        centres = _centres(fields)  # [B, h*w, K, 2]
        dim = self.fmap1.shape[-1]
        window = (2 * self.radius + 1) ** 2
        chunk = max(1, self.chunk_elements // (dim * len(fields) * window))
        out = centres.new_empty(batch, height * width, len(fields), self.num_levels * window)
        for b in range(batch):
            for start in range(0, height * width, chunk):
                rows = slice(start, start + chunk)
                query = centres[b, rows]  # [n, K, 2]
                n = query.shape[0]
                for level, fmap in enumerate(self.pyramid):
                    # image-2 features around every centre: [1, D, n*K, S] -> [n, K*S, D]
                    sampled = sample_windows(fmap[b:b + 1], query.reshape(1, -1, 2) / 2 ** level, self.radius)
                    sampled = sampled[0].permute(1, 2, 0).reshape(n, len(fields) * window, dim)
                    corr = torch.bmm(sampled, self.fmap1[b, rows, :, None])  # [n, K*S, 1]
                    out[b, rows, :, level * window:(level + 1) * window] = corr.reshape(n, len(fields), window)
        results = _as_fields(out, batch, height, width)
        return results[0] if isinstance(coords, torch.Tensor) else results
