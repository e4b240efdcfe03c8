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


# Per coordinate field: levels with at most this many pixels correlate whole rows by one matrix
# product (cheap there) instead of gathering each window's 100 feature vectors.
SMALL_LEVEL_PIXELS = 8192


def _correlates_whole_rows(pixels: int, fields: int) -> bool:
    return pixels <= SMALL_LEVEL_PIXELS * fields


def check_pyramid_size(height: int, width: int, num_levels: int) -> None:
    """The coarsest level must be at least 2x2 (the reference's sampling grid divides by side - 1)."""
    min_side = 2 ** (num_levels - 1) * 2
    if min(height, width) < min_side:
        raise ValueError(
            f"feature maps of {height}x{width} are too small for a {num_levels}-level pyramid: "
            f"each side must be at least {min_side} (image sides >= {8 * min_side} px)")


def _centres(coords: Sequence[torch.Tensor]) -> torch.Tensor:
    """K coordinate fields `[B, 2, h, w]` -> `[B, h*w, K, 2]` window centres."""
    return torch.stack([c.permute(0, 2, 3, 1).flatten(1, 2) for c in coords], dim=2)


def _as_fields(lookup: torch.Tensor, batch: int, height: int, width: int) -> list[torch.Tensor]:
    """`[B, h*w, K, C]` lookups -> K x `[B, C, h, w]`, channels-last like the convolutions that use them."""
    lookup = lookup.reshape(batch, height, width, lookup.shape[2], -1).permute(3, 0, 4, 1, 2)
    return [field.contiguous(memory_format=torch.channels_last) for field in lookup.unbind(0)]


class WindowGrid:
    """Where the integer pixels under a lookup window sit in a level.

    The window offsets are integers, so every sample of a window shares the fractional part
    of its centre, and the (2r+2)^2 integer pixels from `floor(centre) - r` on cover the
    whole window: gathering their correlations and interpolating gives exactly the values
    of bilinear sampling. Levels are stored row-major with one extra zero entry at index
    `pixels`, which every pixel outside the level points to (zeros outside).
    """

    def __init__(self, *, radius: int, height: int, width: int) -> None:
        self.radius = radius
        self.height, self.width = height, width
        self.pixels = height * width

    def index(self, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """centres `[n, K, 2]` (x, y) in pixels of the level -> (index `[n, K, (2r+2)^2]` of the
        window pixels, x-major, `pixels` where outside; fractional parts `[n, K, 2]`)."""
        corner = torch.floor(centres)
        steps = torch.arange(2 * self.radius + 2, device=centres.device)
        start = corner.long() - self.radius
        xs = start[..., 0, None] + steps  # [n, K, 2r+2]
        ys = start[..., 1, None] + steps
        # a column or row outside the level adds `pixels`, so its whole line clamps to the zero entry
        xs = torch.where((xs >= 0) & (xs < self.width), xs, self.pixels)
        ys = torch.where((ys >= 0) & (ys < self.height), ys * self.width, self.pixels)
        index = (xs[..., :, None] + ys[..., None, :]).clamp_max_(self.pixels)
        return index.flatten(2), centres - corner

    def interpolate(self, grid: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
        """Correlations `[n, K, (2r+2)^2]` at `index` -> windows `[n, K, (2r+1)^2]`, channel
        `a * (2r+1) + b` (a: x offset, b: y offset)."""
        n, k = grid.shape[:2]
        side = 2 * self.radius + 1
        grid = grid.reshape(n, k, side + 1, side + 1)  # [n, K, x, y]
        fx, fy = frac[..., 0, None, None], frac[..., 1, None, None]
        along_y = torch.lerp(grid[..., :-1], grid[..., 1:], fy)  # [n, K, side+1, side]
        return torch.lerp(along_y[:, :, :-1], along_y[:, :, 1:], fx).reshape(n, k, side * side)


class CorrBlock:
    """Correlation pyramid of two feature maps, looked up around coordinate fields.

    Levels from `dense_from_level` on are precomputed volumes, one row per query pixel;
    finer levels are computed on the fly from average-pooled image-2 features (pooling
    commutes with the dot product, so the values are the same), `chunk_elements` bounding
    the memory a lookup takes. `dense_from_level=0` is the reference pyramid; 1 drops its
    largest volume (for high resolutions); `num_levels` keeps no volume at all
    (memory-bounded mode). Lookups gather the integer pixels around each window and
    interpolate them (`WindowGrid`).
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
        self.dense_from_level = dense_from_level
        self.grids = [WindowGrid(radius=radius, height=height // 2 ** level, width=width // 2 ** level)
                      for level in range(num_levels)]
        pooled = [fmap2]
        for _ in range(num_levels - 1):
            pooled.append(F.avg_pool2d(pooled[-1], 2, stride=2))
        self.fmap1 = fmap1.flatten(2).transpose(1, 2) / math.sqrt(dim)  # [B, h*w, D]
        # On-the-fly levels: image-2 features as rows [B, h_l*w_l + 1, D], the last one zero.
        self.features = [torch.cat([p.flatten(2).transpose(1, 2), p.new_zeros(batch, 1, dim)], dim=1)
                         for p in pooled[:dense_from_level]]
        # Dense levels [B, h*w, h_l*w_l + 1] (last column zero), filled a block of query pixels
        # at a time: the extra column never costs a second copy of a volume.
        self.volumes = [fmap1.new_empty(batch, height * width, self.grids[level].pixels + 1)
                        for level in range(dense_from_level, num_levels)]
        if self.volumes:
            first = pooled[dense_from_level]
            chunk = max(1, chunk_elements // self.grids[dense_from_level].pixels)
            for start in range(0, height * width, chunk):
                rows = slice(start, start + chunk)
                corr = torch.matmul(self.fmap1[:, rows], first.flatten(2))  # [B, n, h_l*w_l]
                level_map = corr.view(-1, 1, *first.shape[-2:])  # [B*n, 1, h_l, w_l]
                for offset, volume in enumerate(self.volumes):
                    if offset:
                        level_map = F.avg_pool2d(level_map, 2, stride=2)
                    volume[:, rows, :-1] = level_map.view(batch, -1, volume.shape[-1] - 1)
            for volume in self.volumes:
                volume[:, :, -1] = 0.0

    @property
    def out_channels(self) -> int:
        return self.num_levels * (2 * self.radius + 1) ** 2

    def _level_windows(self, level: int, centres: torch.Tensor) -> torch.Tensor:
        """`[B, h*w, K, 2]` centres at level 0 -> `[B, h*w, K, (2r+1)**2]` windows of `level`."""
        batch, queries, k, _ = centres.shape
        grid = self.grids[level]
        corners = k * (2 * self.radius + 2) ** 2  # integer pixels gathered per query
        dense = level >= self.dense_from_level
        whole_rows = not dense and _correlates_whole_rows(grid.height * grid.width, k)
        if dense:
            per_query = corners
        elif whole_rows:
            per_query = grid.pixels + 1 + corners  # a row of correlations and its windows
        else:
            per_query = corners * self.fmap1.shape[-1]  # the window pixels' features
        chunk = max(1, self.chunk_elements // per_query)
        windows = []
        for b in range(batch):
            for start in range(0, queries, chunk):
                rows = slice(start, start + chunk)
                index, frac = grid.index(centres[b, rows] / 2 ** level)  # [n, K, corners/K]
                n = index.shape[0]
                if dense:
                    values = torch.gather(self.volumes[level - self.dense_from_level][b, rows], 1, index.reshape(n, -1))
                elif whole_rows:
                    values = torch.gather(self.fmap1[b, rows] @ self.features[level][b].T, 1, index.reshape(n, -1))
                else:
                    gathered = self.features[level][b][index.reshape(-1)].reshape(n, corners, -1)  # [n, corners, D]
                    values = torch.bmm(gathered, self.fmap1[b, rows, :, None])
                windows.append(grid.interpolate(values.reshape(n, k, -1), frac))
        return torch.cat(windows).reshape(batch, queries, k, -1)

    def __call__(self, coords: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Look up `[B, 2, h, w]` coordinates -> `[B, out_channels, h, w]` float32.

        Given a list of coordinate fields, looks them all up in one pass per level and
        returns a list (the decoder heads share the pyramid).
        """
        fields = [coords] if isinstance(coords, torch.Tensor) else list(coords)
        batch, height, width = self.shape
        centres = _centres(fields).float()  # [B, h*w, K, 2]
        levels = [self._level_windows(level, centres) for level in range(self.num_levels)]
        out = torch.cat(levels, dim=-1)  # [B, h*w, K, out_channels]
        results = _as_fields(out, batch, height, width)
        return results[0] if isinstance(coords, torch.Tensor) else results
