"""Global motion aggregation (GMA): attention over context features and its use on motion.

`Attention` turns the context features into a `[B, heads, h*w, h*w]` matrix once per
forward; `Aggregate` mixes the motion features of every iteration with it.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from core.corr import row_blocks
from core.precision import inference_cast_dtype, under_autograd


class RelativePositionEmbedding(nn.Module):
    """Learned relative-position logits for 2-D attention (`pos_emb` of the checkpoints).

    The score of a query at (row x, col y) for a key at (row u, col v) is
    `q . rel_height[u - x + M - 1] + q . rel_width[v - y + M - 1]`, M = `max_positions`.
    """

    def __init__(self, *, max_positions: int, dim_head: int) -> None:
        super().__init__()
        self.max_positions = max_positions
        index = torch.arange(max_positions)
        # rel_ind[i, j] = j - i + M - 1; stored in the checkpoints, so kept as a buffer.
        self.register_buffer("rel_ind", index[None, :] - index[:, None] + max_positions - 1)
        self.rel_height = nn.Embedding(2 * max_positions - 1, dim_head)
        self.rel_width = nn.Embedding(2 * max_positions - 1, dim_head)

    def forward(self, q: torch.Tensor, *, key_height: int | None = None, row_offset: int = 0) -> torch.Tensor:
        """Position logits `[B, heads, rows, w, key_height, w]` for queries `q` `[B, heads, rows, w, d]`
        (already scaled) that sit at rows `row_offset...` of a map with `key_height` rows."""
        rows, width = q.shape[2:4]
        height = rows if key_height is None else key_height
        if max(height, width) > self.max_positions:
            raise ValueError(
                f"relative position attention supports at most {self.max_positions} positions per side "
                f"at 1/8 resolution ({8 * self.max_positions} px); got {width}x{height}"
            )
        emb_h = self.rel_height(self.rel_ind[row_offset : row_offset + rows, :height])  # [rows(x), h(u), d]
        emb_w = self.rel_width(self.rel_ind[:width, :width])  # [w(y), w(v), d]
        score_h = torch.einsum("bnxyd,xud->bnxyu", q, emb_h)
        score_w = torch.einsum("bnxyd,yvd->bnxyv", q, emb_w)
        return score_h[..., :, None] + score_w[..., None, :]


class AttentionLogits:
    """Query/key pair of GMA attention; produces softmax rows a block of query rows at a time."""

    def __init__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        content: bool,
        position: RelativePositionEmbedding | None,
        chunk_elements: int,
    ) -> None:
        # q, k: [B, heads, h, w, d], q already scaled
        self.q, self.k = q, k
        self.content, self.position = content, position
        self.height, self.width = q.shape[2:4]
        self.chunk_elements = chunk_elements

    def blocks(self):
        """Yield (query slice in flattened h*w order, softmax block `[B, heads, n, h*w]`), blocks of
        image rows of queries holding about `chunk_elements` logits; `slice(None)` for one block."""
        keys = self.k.flatten(2, 3)  # [B, heads, h*w, d]
        row_elements = self.q.shape[0] * self.q.shape[1] * self.width * self.height * self.width
        for rows in row_blocks(self.height, row_elements=row_elements, budget=self.chunk_elements):
            q = self.q[:, :, rows]  # [B, heads, rows, w, d]
            row = rows.start or 0
            logits = None
            if self.content:
                logits = torch.matmul(q.flatten(2, 3), keys.transpose(-1, -2))
            if self.position is not None:
                pos = self.position(q, key_height=self.height, row_offset=row).flatten(4, 5).flatten(2, 3)
                logits = pos if logits is None else logits + pos
            # float32 softmax under autograd, as CUDA's autocast does for the reference
            dtype = torch.float32 if under_autograd() else None
            queries = rows if rows == slice(None) else slice(row * self.width, (row + q.shape[2]) * self.width)
            yield queries, logits.softmax(dim=-1, dtype=dtype)


class ChunkedAttention:
    """GMA attention applied without ever holding the `[h*w, h*w]` matrix (memory-bounded mode)."""

    def __init__(self, logits: AttentionLogits) -> None:
        self.logits = logits

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        # v: [B, heads, h*w, d] -> [B, heads, h*w, d]
        out = None
        for rows, block in self.logits.blocks():
            product = torch.matmul(block, v)
            if out is None:
                out = product.new_empty(*v.shape[:-1], product.shape[-1])
            out[:, :, rows] = product
        return out


class Attention(nn.Module):
    """Self-attention weights over all positions of the context features (`att`)."""

    def __init__(
        self,
        *,
        dim: int,
        heads: int,
        dim_head: int,
        max_positions: int,
        position_only: bool = False,
        position_and_content: bool = False,
    ) -> None:
        super().__init__()
        if position_only and position_and_content:
            raise ValueError("choose at most one of position_only and position_and_content")
        self.heads = heads
        self.scale = dim_head**-0.5
        self.position_only = position_only
        self.position_and_content = position_and_content
        self.to_qk = nn.Conv2d(dim, 2 * heads * dim_head, 1, bias=False)
        self.pos_emb = RelativePositionEmbedding(max_positions=max_positions, dim_head=dim_head)

    def logits(self, fmap: torch.Tensor, *, chunk_elements: int = 2**22) -> AttentionLogits:
        q, k = self.to_qk(fmap).chunk(2, dim=1)
        q = rearrange(q, "b (n d) x y -> b n x y d", n=self.heads) * self.scale
        k = rearrange(k, "b (n d) x y -> b n x y d", n=self.heads)
        position = self.pos_emb if (self.position_only or self.position_and_content) else None
        return AttentionLogits(q, k, content=not self.position_only, position=position, chunk_elements=chunk_elements)

    def forward(self, fmap: torch.Tensor, *, materialise: bool = True) -> torch.Tensor | ChunkedAttention:
        """fmap `[B, dim, h, w]` -> attention `[B, heads, h*w, h*w]` (softmax over keys).

        Built a block of query rows at a time into one preallocated matrix, so the peak is
        the matrix plus one block. With `materialise=False`, returns a ChunkedAttention that
        recomputes blocks whenever it is applied (memory-bounded mode).
        """
        logits = self.logits(fmap)
        if not materialise:
            return ChunkedAttention(logits)
        height, width = fmap.shape[-2:]
        # At inference under autocast the matrix is kept in the autocast dtype it is used in.
        # Under autograd it stays float32 (softmax's dtype), as in the reference: each use
        # casts it afresh, so the gradients of all iterations add up in float32.
        cast_dtype = inference_cast_dtype(fmap.device.type)
        attention = None
        for rows, block in logits.blocks():
            dtype = block.dtype if cast_dtype is None else cast_dtype
            if rows == slice(None):  # one block is the whole matrix
                return block.to(dtype)
            if attention is None:
                attention = block.new_empty(*block.shape[:2], height * width, height * width, dtype=dtype)
            attention[:, :, rows] = block
        return attention


class Aggregate(nn.Module):
    """`fmap + gamma * attention @ to_v(fmap)`: globally aggregated motion features."""

    def __init__(self, *, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_v = nn.Conv2d(dim, inner, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.project = nn.Conv2d(inner, dim, 1, bias=False) if inner != dim else None

    def values(self, fmap: torch.Tensor) -> torch.Tensor:
        """fmap `[B, dim, h, w]` -> values `[B, heads, h*w, d]`."""
        return rearrange(self.to_v(fmap), "b (n d) x y -> b n (x y) d", n=self.heads)

    def combine(self, fmap: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """fmap + gamma * (attention @ values) reshaped back to `[B, dim, h, w]`."""
        height, width = fmap.shape[-2:]
        out = rearrange(attended, "b n (x y) d -> b (n d) x y", x=height, y=width)
        if self.project is not None:
            out = self.project(out)
        return fmap + (self.gamma * out).to(fmap.dtype)  # stays in the autocast dtype

    def forward(self, attention: torch.Tensor | ChunkedAttention, fmap: torch.Tensor) -> torch.Tensor:
        # attention: [B, heads, h*w, h*w]; fmap: [B, dim, h, w]
        return self.combine(fmap, attention @ self.values(fmap))
