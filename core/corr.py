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
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from core.precision import volume_dtype

# Sizes of the published architecture's pyramid (the checkpoints depend on them).
CORR_LEVELS = 4  # correlation pyramid levels (coarsest = 1/64 of the image)
CORR_RADIUS = 4  # lookup window 9x9 at every level
# CPU: beyond this many values (512 MiB in float32), the finest correlation level is computed on
# the fly instead of stored (same values; at batch 1 from about 860x860 px up).
MAX_DENSE_CORRELATION = 2**27
# CUDA: the whole pyramid is stored while it takes at most this share of the free device memory
# (on the fly, the finest level costs a large matrix product at every iteration).
CUDA_DENSE_SHARE = 0.5


def coords_grid(batch: int, height: int, width: int, *, device: torch.device | None = None) -> torch.Tensor:
    """Pixel-centre coordinates `[B, 2, H, W]`, channel 0 = x (column), channel 1 = y (row)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
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
            f"feature maps of {width}x{height} are too small for a {num_levels}-level pyramid: "
            f"each side must be at least {min_side} (image sides >= {8 * min_side} px)"
        )


def dense_from_level(
    batch: int, pixels: int, device: torch.device, *, bytes_per_value: int = 4, free_bytes: int | None = None
) -> int:
    """First correlation level to store as a volume for `batch` maps of `pixels` (at 1/8 scale).

    0 (all levels stored) unless the finest level is too large: on CPU beyond
    MAX_DENSE_CORRELATION values, on CUDA when the pyramid would take more than
    CUDA_DENSE_SHARE of `free_bytes` (default: the device's free memory now).
    """
    values = batch * pixels * pixels
    if device.type != "cuda":
        return 0 if values <= MAX_DENSE_CORRELATION else 1
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    pyramid_bytes = values * bytes_per_value * sum(4**-level for level in range(CORR_LEVELS))
    return 0 if pyramid_bytes <= CUDA_DENSE_SHARE * free_bytes else 1


def corr_levels_stored_from(
    batch: int,
    pixels: int,
    device: torch.device,
    *,
    amp_dtype: torch.dtype | None = None,
    alternate_corr: bool = False,
) -> int:
    """First correlation level kept as a volume (finer levels are computed on the fly)."""
    if alternate_corr:
        return CORR_LEVELS  # memory-bounded: no volume at all
    return dense_from_level(batch, pixels, device, bytes_per_value=volume_dtype(device, amp_dtype).itemsize)


def row_blocks(total: int, *, row_elements: int, budget: int) -> list[slice]:
    """Slices over `total` rows of `row_elements` values each, about `budget` values per block;
    `[slice(None)]` when one block holds them all. They bound the memory of one step: the
    correlation volume and its lookups here, the attention of `core.gma`.

    Always one block while torch.export traces: an exported graph serves every input size, so
    it has no loop whose count depends on the size (its memory grows with the size instead).
    """
    if torch.compiler.is_exporting():
        return [slice(None)]
    rows = max(1, budget // row_elements)
    if rows >= total:
        return [slice(None)]
    return [slice(start, start + rows) for start in range(0, total, rows)]


def _centres(coords: Sequence[torch.Tensor]) -> torch.Tensor:
    """K coordinate fields `[B, 2, h, w]` -> `[B, h*w, K, 2]` window centres."""
    return torch.stack([c.permute(0, 2, 3, 1).flatten(1, 2) for c in coords], dim=2)


def _as_fields(lookup: torch.Tensor, batch: int, height: int, width: int) -> list[torch.Tensor]:
    """`[B, h*w, K, C]` lookups -> K x `[B, C, h, w]`, channels-last like the convolutions that use them."""
    lookup = lookup.reshape(batch, height, width, lookup.shape[2], -1).permute(3, 0, 4, 1, 2)
    return [field.contiguous(memory_format=torch.channels_last) for field in lookup.unbind(0)]


def _column(values: Sequence[int | float], device: torch.device | None, dtype: torch.dtype) -> torch.Tensor:
    """`[L, 1]` tensor of `values`, made with fill kernels on the device (no host-to-device
    copy, so a CUDA graph can capture it; shape-derived values stay symbolic in torch.export)."""
    return torch.stack([torch.full((), value, device=device, dtype=dtype) for value in values])[:, None]


class WindowGrid:
    """Where the integer pixels under lookup windows sit, for one or several pyramid levels.

    The window offsets are integers, so every sample of a window shares the fractional part
    of its centre, and the (2r+2)^2 integer pixels from `floor(centre) - r` on cover the
    whole window: gathering their correlations and interpolating gives exactly the values
    of bilinear sampling. Each level is stored row-major followed by one zero entry, which
    every pixel outside the level points to (zeros outside); several levels are stored side
    by side in one row, so one gather serves them all.
    """

    def __init__(
        self,
        *,
        radius: int,
        sizes: Sequence[tuple[int, int]],
        scales: Sequence[int],
        device: torch.device | None = None,
    ) -> None:
        self.radius = radius
        self.pixels = [height * width for height, width in sizes]  # per level
        self.starts = [sum(p + 1 for p in self.pixels[:i]) for i in range(len(sizes))]  # of each level in a row
        self.zero_entries = [start + p for start, p in zip(self.starts, self.pixels)]
        self.row_length = self.zero_entries[-1] + 1  # of a row holding every level
        self._scale = _column(scales, device, torch.float32)  # [L, 1] each
        self._height, self._width = (_column(side, device, torch.int64) for side in zip(*sizes))
        self._pixels, self._start, self._zero_entry = (
            _column(values, device, torch.int64) for values in (self.pixels, self.starts, self.zero_entries)
        )
        self._steps = torch.arange(2 * radius + 2, device=device)

    @property
    def levels(self) -> int:
        return len(self.pixels)

    def index(self, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """centres `[..., K, 2]` (x, y) in level-0 pixels -> (index `[..., K, L, (2r+2)^2]` of the
        window pixels in a row of all levels, x-major; fractional parts `[..., K, L, 2]`)."""
        scaled = centres[..., None, :] / self._scale  # [..., K, L, 2]
        corner = torch.floor(scaled)
        start = corner.long() - self.radius
        xs = start[..., 0, None] + self._steps  # [..., K, L, 2r+2]
        ys = start[..., 1, None] + self._steps
        # a column or row outside its level adds `pixels`, so its whole line clamps to the zero entry
        xs = torch.where((xs >= 0) & (xs < self._width), xs + self._start, self._zero_entry)
        ys = torch.where((ys >= 0) & (ys < self._height), ys * self._width, self._pixels)
        index = xs[..., :, None] + ys[..., None, :]  # [..., K, L, x, y]
        index = index.clamp_max_(self._zero_entry[..., None])
        return index.flatten(-2), scaled - corner

    def interpolate(self, grid: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
        """Correlations `[..., K, L, (2r+2)^2]` at `index` -> windows `[..., K, L * (2r+1)^2]`, levels
        in order, channel `a * (2r+1) + b` within a level (a: x offset, b: y offset)."""
        side = 2 * self.radius + 1
        grid = grid.unflatten(-1, (side + 1, side + 1))  # [..., K, L, x, y]
        fx, fy = frac[..., 0, None, None], frac[..., 1, None, None]
        along_y = torch.lerp(grid[..., :-1], grid[..., 1:], fy)  # [..., K, L, side+1, side]
        window = torch.lerp(along_y[..., :-1, :], along_y[..., 1:, :], fx)  # [..., K, L, side, side]
        return window.flatten(-3)


class CorrBlock:
    """Correlation pyramid of two feature maps, looked up around coordinate fields.

    Levels from `dense_from_level` on are precomputed, one row per query pixel holding all
    of them; finer levels are computed on the fly from average-pooled image-2 features
    (pooling commutes with the dot product, so the values are the same), `chunk_elements`
    bounding the memory a lookup takes. `dense_from_level=0` is the reference pyramid; 1
    drops its largest volume (for high resolutions); `num_levels` keeps no volume at all
    (memory-bounded mode). Lookups gather the integer pixels around each window and
    interpolate them (`WindowGrid`). Correlations are computed and stored in `dtype` (the
    autocast dtype on a GPU: tensor-core products with float32 accumulation, half the
    memory); lookups interpolate them in float32.
    """

    def __init__(
        self,
        fmap1: torch.Tensor,
        fmap2: torch.Tensor,
        *,
        num_levels: int = CORR_LEVELS,
        radius: int = CORR_RADIUS,
        dense_from_level: int = 0,
        chunk_elements: int = 2**24,
        dtype: torch.dtype = torch.float32,
    ) -> None:
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
        sizes = [(height // 2**level, width // 2**level) for level in range(num_levels)]
        pooled = [fmap2]
        for _ in range(num_levels - 1):
            pooled.append(F.avg_pool2d(pooled[-1], 2, stride=2))
        self.fmap1 = (fmap1.flatten(2).transpose(1, 2) / math.sqrt(dim)).to(dtype)  # [B, h*w, D]
        # On-the-fly levels: image-2 features as rows [B, h_l*w_l + 1, D], the last one zero.
        self.features = [
            torch.cat([p.flatten(2).transpose(1, 2), p.new_zeros(batch, 1, dim)], dim=1).to(dtype)
            for p in pooled[:dense_from_level]
        ]
        # per on-the-fly level, where each batch element starts in its batch-flattened features
        # `[B, 1, 1]` (made once per forward, not at every lookup)
        elements = torch.arange(batch, device=fmap1.device)[:, None, None]
        self.feature_offsets = [elements * f.shape[1] for f in self.features]
        self.level_grids = [
            WindowGrid(radius=radius, sizes=[sizes[level]], scales=[2**level], device=fmap1.device)
            for level in range(dense_from_level)
        ]
        self.dense_grid = None
        if dense_from_level < num_levels:
            levels = range(dense_from_level, num_levels)
            self.dense_grid = WindowGrid(
                radius=radius,
                sizes=[sizes[level] for level in levels],
                scales=[2**level for level in levels],
                device=fmap1.device,
            )
            self.volume = self._dense_volume(pooled[dense_from_level].to(dtype))  # [B, h*w, row_length]

    def _dense_volume(self, first: torch.Tensor) -> torch.Tensor:
        """`[B, h*w, row_length]`: for every query pixel, each dense level (from `first`, the image-2
        features of the finest one) followed by its zero entry. A single block of query pixels is
        one concatenation (an exported graph then has no in-place slice writes, which ONNX spells
        as transposes of the whole volume); several are written into one buffer (no second copy)."""
        batch, queries, _ = self.fmap1.shape
        grid = self.dense_grid
        blocks = row_blocks(queries, row_elements=grid.pixels[0], budget=self.chunk_elements)
        if len(blocks) == 1:
            return self._dense_rows(first, blocks[0])
        volume = self.fmap1.new_empty(batch, queries, grid.row_length)
        for rows in blocks:
            volume[:, rows] = self._dense_rows(first, rows)
        return volume

    def _dense_rows(self, first: torch.Tensor, rows: slice) -> torch.Tensor:
        """The volume's rows of the query pixels `rows`: `[B, n, row_length]`."""
        corr = torch.matmul(self.fmap1[:, rows], first.flatten(2))  # [B, n, h_l*w_l]
        batch, queries, _ = corr.shape
        level_map = corr.view(-1, 1, *first.shape[-2:])  # [B*n, 1, h_l, w_l]
        zero_entry = corr.new_zeros(batch, queries, 1)
        entries = []
        for offset, pixels in enumerate(self.dense_grid.pixels):
            if offset:
                level_map = F.avg_pool2d(level_map, 2, stride=2)
            entries += [level_map.view(batch, queries, pixels), zero_entry]
        return torch.cat(entries, dim=2)

    @property
    def out_channels(self) -> int:
        return self.num_levels * (2 * self.radius + 1) ** 2

    def _windows(self, centres: torch.Tensor, level: int | None) -> torch.Tensor:
        """`[B, h*w, K, 2]` centres at level 0 -> `[B, h*w, K, C]` windows of one on-the-fly
        `level`, or of all dense levels (`level=None`).

        The whole batch goes through each gather (few, large kernels: at training batch sizes a
        loop over the batch would multiply the launches and, under autograd, the full-size
        gradient buffers of the volume); `chunk_elements` bounds a block of query rows.
        """
        batch, queries, k, _ = centres.shape
        grid = self.dense_grid if level is None else self.level_grids[level]
        corners = k * grid.levels * (2 * self.radius + 2) ** 2  # integer pixels gathered per query
        whole_rows = level is not None and _correlates_whole_rows(grid.pixels[0], k)
        if level is None:
            per_query = corners
        elif whole_rows:
            per_query = grid.row_length + corners  # a row of correlations and its windows
        else:
            per_query = corners * self.fmap1.shape[-1]  # the window pixels' features
        windows = []
        # one block: `slice(None)`, since a slice of every row would give the volume's gradient
        # one more full-size buffer
        for rows in row_blocks(queries, row_elements=batch * per_query, budget=self.chunk_elements):
            index, frac = grid.index(centres[:, rows])  # [B, n, K, L, (2r+2)^2]
            flat = index.flatten(2)  # [B, n, corners]
            if level is None:
                values = torch.gather(self.volume[:, rows], 2, flat).float()
            elif whole_rows:
                products = torch.bmm(self.fmap1[:, rows], self.features[level].transpose(1, 2))  # [B, n, row]
                values = torch.gather(products.float(), 2, flat)
            else:
                features = self.features[level].flatten(0, 1)  # [B * (P + 1), D]
                gathered = features[flat + self.feature_offsets[level]]  # [B, n, corners, D]
                values = torch.matmul(gathered, self.fmap1[:, rows, :, None]).float()  # [B, n, corners, 1]
            windows.append(grid.interpolate(values.reshape(index.shape), frac))
        return windows[0] if len(windows) == 1 else torch.cat(windows, dim=1)

    def __call__(self, coords: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Look up `[B, 2, h, w]` coordinates -> `[B, out_channels, h, w]` float32.

        Given a list of coordinate fields, looks them all up in one pass and returns a list
        (the decoder heads share the pyramid).
        """
        fields = [coords] if isinstance(coords, torch.Tensor) else list(coords)
        batch, height, width = self.shape
        centres = _centres(fields).float()  # [B, h*w, K, 2]
        levels = [self._windows(centres, level) for level in range(self.dense_from_level)]
        if self.dense_grid is not None:
            levels.append(self._windows(centres, None))
        out = levels[0] if len(levels) == 1 else torch.cat(levels, dim=-1)  # [B, h*w, K, out_channels]
        results = _as_fields(out, batch, height, width)
        return results[0] if isinstance(coords, torch.Tensor) else results
