"""All-pairs correlation pyramid and its windowed lookup (dense, on the fly, or both).

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


# Per coordinate field: levels with at most this many pixels correlate whole rows by one matrix
# product (cheap there) instead of gathering each window's 100 feature vectors.
SMALL_LEVEL_PIXELS = 8192


def _correlates_whole_rows(pixels: int, fields: int) -> bool:
    return pixels <= SMALL_LEVEL_PIXELS * fields


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


def window_correlation(fmap1: torch.Tensor, features: torch.Tensor, centres: torch.Tensor, radius: int,
                       height: int, width: int) -> torch.Tensor:
    """Correlation windows computed on the fly from image-2 features (no volume needed).

    fmap1:    `[n, D]` image-1 features of n query pixels (already divided by sqrt(D))
    features: `[height * width + 1, D]` image-2 features of one level, row-major, plus a
              final zero row that stands for everything outside the image
    centres:  `[n, K, 2]` window centres (x, y) in pixels of this level
    returns   `[n, K, (2r+1)**2]`, the same values and order as bilinearly sampling the
              correlation volume (`sample_windows`)

    The window offsets are integers, so every sample of a window shares the fractional
    part of its centre: correlating with the (2r+2)^2 integer pixels around it and
    interpolating those correlations bilinearly gives the sampled values. On small levels
    the query rows are correlated with the whole level by one matrix product and the
    windows gathered from it; on large ones only the window pixels' features are gathered.
    """
    n, k, _ = centres.shape
    side = 2 * radius + 1
    corner = torch.floor(centres)
    frac = centres - corner  # [n, K, 2]
    steps = torch.arange(side + 1, device=centres.device)
    start = corner.long() - radius
    xs = start[..., 0:1] + steps  # [n, K, side+1]
    ys = start[..., 1:2] + steps
    inside = ((ys >= 0) & (ys < height))[..., :, None] & ((xs >= 0) & (xs < width))[..., None, :]
    index = torch.where(inside, ys[..., :, None] * width + xs[..., None, :], height * width)  # [n, K, y, x]
    if _correlates_whole_rows(height * width, k):
        rows = fmap1 @ features.T  # [n, h*w + 1]; the last column is 0 (outside)
        grid = torch.gather(rows, 1, index.reshape(n, -1))
    else:
        gathered = features[index.reshape(-1)].reshape(n, -1, features.shape[-1])  # [n, K*(side+1)^2, D]
        grid = torch.bmm(gathered, fmap1[:, :, None])
    grid = grid.reshape(n, k, side + 1, side + 1)  # [n, K, y, x]
    fx, fy = frac[..., 0, None, None], frac[..., 1, None, None]
    top = (1 - fx) * grid[..., :-1, :-1] + fx * grid[..., :-1, 1:]
    bottom = (1 - fx) * grid[..., 1:, :-1] + fx * grid[..., 1:, 1:]
    window = (1 - fy) * top + fy * bottom  # [n, K, side (y offset b), side (x offset a)]
    return window.transpose(-1, -2).reshape(n, k, side * side)  # channel a * side + b


class CorrBlock:
    """Correlation pyramid of two feature maps, looked up around coordinate fields.

    Levels from `dense_from_level` on are precomputed volumes `[B*h*w, 1, h_l, w_l]`; finer
    levels are computed on the fly from average-pooled image-2 features (pooling commutes
    with the dot product, so the values are the same), `chunk_elements` bounding the
    memory this takes. `dense_from_level=0` is the reference pyramid; 1 drops its largest
    volume (for high resolutions); `num_levels` keeps no volume at all (memory-bounded mode).
    """

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, *, num_levels: int = 4, radius: int = 4,
                 dense_from_level: int = 0, chunk_elements: int = 2 ** 24) -> None:
        # fmap1, fmap2: [B, D, h, w] float32
        batch, dim, height, width = fmap1.shape
        check_pyramid_size(height, width, num_levels)
        if not 0 <= dense_from_level <= num_levels:
            raise ValueError(f"dense_from_level must be in 0..{num_levels}, got {dense_from_level}")
        self.num_levels = num_levels
        self.radius = radius
        self.shape = (batch, height, width)
        self.chunk_elements = chunk_elements
        pooled = [fmap2]
        for _ in range(num_levels - 1):
            pooled.append(F.avg_pool2d(pooled[-1], 2, stride=2))
        rows1 = fmap1.flatten(2).transpose(1, 2)  # [B, h*w, D]
        # On-the-fly levels: image-2 features as rows, plus a zero row for "outside".
        self.features = [torch.cat([p.flatten(2).transpose(1, 2), p.new_zeros(batch, 1, dim)], dim=1)
                         for p in pooled[:dense_from_level]]
        self.fmap1 = rows1 / math.sqrt(dim) if self.features else None
        self.volumes = []
        if dense_from_level < num_levels:
            first = pooled[dense_from_level]
            volume = torch.matmul(rows1, first.flatten(2))  # [B, h*w, h_l*w_l]
            # in place: no second copy of the largest tensor
            volume = volume.reshape(batch * height * width, 1, *first.shape[-2:]).div_(math.sqrt(dim))
            self.volumes.append(volume)
            for _ in range(dense_from_level + 1, num_levels):
                self.volumes.append(F.avg_pool2d(self.volumes[-1], 2, stride=2))

    @property
    def out_channels(self) -> int:
        return self.num_levels * (2 * self.radius + 1) ** 2

    def _on_the_fly(self, level: int, centres: torch.Tensor) -> torch.Tensor:
        """`[B, h*w, K, 2]` centres at level 0 -> `[B, h*w, K, S]` windows of `level`."""
        batch, queries, k, _ = centres.shape
        features = self.features[level]
        height, width = self.shape[1] // 2 ** level, self.shape[2] // 2 ** level
        window = (2 * self.radius + 1) ** 2
        if _correlates_whole_rows(height * width, k):
            per_query = height * width + 1 + k * (2 * self.radius + 2) ** 2  # a row and its windows
        else:
            per_query = k * (2 * self.radius + 2) ** 2 * features.shape[-1]  # window features
        chunk = max(1, self.chunk_elements // per_query)
        out = centres.new_empty(batch, queries, k, window)
        for b in range(batch):
            for start in range(0, queries, chunk):
                rows = slice(start, start + chunk)
                out[b, rows] = window_correlation(self.fmap1[b, rows], features[b], centres[b, rows] / 2 ** level,
                                                  self.radius, height, width)
        return out

    def __call__(self, coords: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Look up `[B, 2, h, w]` coordinates -> `[B, out_channels, h, w]` float32.

        Given a list of coordinate fields, looks them all up in one pass per level and
        returns a list (the decoder heads share the pyramid).
        """
        fields = [coords] if isinstance(coords, torch.Tensor) else list(coords)
        batch, height, width = self.shape
        centres = _centres(fields)  # [B, h*w, K, 2]
        levels = [self._on_the_fly(level, centres) for level in range(len(self.features))]
        first_dense = len(self.features)
        for offset, volume in enumerate(self.volumes):  # one volume per query pixel
            windows = sample_windows(volume, centres.flatten(0, 1) / 2 ** (first_dense + offset), self.radius)
            levels.append(windows[:, 0].reshape(batch, height * width, len(fields), -1))
        out = torch.cat(levels, dim=-1).float()  # [B, h*w, K, out_channels]
        results = _as_fields(out, batch, height, width)
        return results[0] if isinstance(coords, torch.Tensor) else results
