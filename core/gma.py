"""Global motion aggregation (GMA): attention over context features and its use on motion.

`Attention` turns the context features into a `[B, heads, h*w, h*w]` matrix once per
forward; `Aggregate` mixes the motion features of every iteration with it.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


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

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        # q: [B, heads, h, w, d] (already scaled) -> logits [B, heads, h, w, h, w]
        height, width = q.shape[2:4]
        if max(height, width) > self.max_positions:
            raise ValueError(
                f"relative position attention supports at most {self.max_positions} positions per side "
                f"at 1/8 resolution ({8 * self.max_positions} px); got {height}x{width}")
        emb_h = self.rel_height(self.rel_ind[:height, :height])  # [h(x), h(u), d]
        emb_w = self.rel_width(self.rel_ind[:width, :width])  # [w(y), w(v), d]
        score_h = torch.einsum("bnxyd,xud->bnxyu", q, emb_h)
        score_w = torch.einsum("bnxyd,yvd->bnxyv", q, emb_w)
        return score_h[..., :, None] + score_w[..., None, :]


class Attention(nn.Module):
    """Self-attention weights over all positions of the context features (`att`)."""

    def __init__(self, *, dim: int, heads: int, dim_head: int, max_positions: int,
                 position_only: bool = False, position_and_content: bool = False) -> None:
        super().__init__()
        if position_only and position_and_content:
            raise ValueError("choose at most one of position_only and position_and_content")
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.position_only = position_only
        self.position_and_content = position_and_content
        self.to_qk = nn.Conv2d(dim, 2 * heads * dim_head, 1, bias=False)
        self.pos_emb = RelativePositionEmbedding(max_positions=max_positions, dim_head=dim_head)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        # fmap: [B, dim, h, w] -> attention [B, heads, h*w, h*w], softmax over keys
        height, width = fmap.shape[-2:]
        q, k = self.to_qk(fmap).chunk(2, dim=1)
        q = rearrange(q, "b (n d) x y -> b n x y d", n=self.heads) * self.scale
        k = rearrange(k, "b (n d) x y -> b n x y d", n=self.heads)
        if self.position_only:
            sim = self.pos_emb(q).reshape(*q.shape[:2], height * width, height * width)
        else:
            sim = torch.einsum("bnid,bnjd->bnij", q.flatten(2, 3), k.flatten(2, 3))
            if self.position_and_content:
                sim = sim + self.pos_emb(q).reshape(sim.shape)
        return sim.softmax(dim=-1)


class Aggregate(nn.Module):
    """`fmap + gamma * attention @ to_v(fmap)`: globally aggregated motion features."""

    def __init__(self, *, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_v = nn.Conv2d(dim, inner, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.project = nn.Conv2d(inner, dim, 1, bias=False) if inner != dim else None

    def forward(self, attention: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
        # attention: [B, heads, h*w, h*w]; fmap: [B, dim, h, w]
        height, width = fmap.shape[-2:]
        v = rearrange(self.to_v(fmap), "b (n d) x y -> b n (x y) d", n=self.heads)
        out = torch.matmul(attention, v)  # [B, heads, h*w, d]
        out = rearrange(out, "b n (x y) d -> b (n d) x y", x=height, y=width)
        if self.project is not None:
            out = self.project(out)
        return fmap + self.gamma * out
