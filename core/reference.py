"""The straightforward DecFlow forward: the spec's steps one by one, no shortcuts.

Read this first: it is the algorithm of the paper (and of the "Forward pass" of the
project's behavioural specification of the reference, DECFLOW.md) as plain code, while
`core.network.DecFlow.forward` is the same computation arranged for speed and memory. It
runs the same modules (and weights) as `DecFlow.forward` but as the reference does: the
correlation pyramid sampled with `grid_sample`, the attention matrix as one einsum +
softmax, a separate correlation lookup for each decoder, the plain update block (whole GRU
input convolved every iteration, mask head every iteration) and convex upsampling of both
decoders at every iteration, in fp32. The fast path must agree with it (tests) and beat it
(benchmarks).

With `amp_dtype` it autocasts as the reference's `--mixed_precision` does: one region for
fnet, one for the context, one per iteration for each update block; the correlation and
the coordinates stay in float32. Mixed-precision gradients are compared with this layout.
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn import functional as F

from core.corr import CORR_LEVELS, CORR_RADIUS, coords_grid
from core.defaults import ITERS
from core.network import CONTEXT_DIM, HIDDEN_DIM, DecFlow, DecFlowOutput, convex_upsample
from core.utils.padder import UPSAMPLE_FACTOR, check_inputs


def straightforward_pyramid(fmap1: torch.Tensor, fmap2: torch.Tensor) -> list[torch.Tensor]:
    """All-pairs correlation `[B*h*w, 1, h, w]` / sqrt(D) and its average-pooled levels."""
    batch, dim, height, width = fmap1.shape
    corr = torch.matmul(fmap1.flatten(2).transpose(1, 2), fmap2.flatten(2)) / dim**0.5
    pyramid = [corr.reshape(batch * height * width, 1, height, width)]
    for _ in range(CORR_LEVELS - 1):
        pyramid.append(F.avg_pool2d(pyramid[-1], 2, stride=2))
    return pyramid


def straightforward_lookup(pyramid: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample a (2r+1)^2 window of every level around `coords` `[B, 2, h, w]`.

    As in the reference, the first window axis is added to x (channel `a * (2r+1) + b`,
    a: x offset) and sampling uses `grid_sample(align_corners=True)` with zero padding.
    """
    batch, _, height, width = coords.shape
    steps = torch.linspace(-CORR_RADIUS, CORR_RADIUS, 2 * CORR_RADIUS + 1, device=coords.device)
    delta = torch.stack(torch.meshgrid(steps, steps, indexing="ij"), dim=-1)  # [s, s, 2]
    centres = coords.permute(0, 2, 3, 1).reshape(batch * height * width, 1, 1, 2)
    levels = []
    for level, volume in enumerate(pyramid):
        points = centres / 2**level + delta  # [B*h*w, s, s, 2] (x, y)
        size = torch.tensor([volume.shape[-1] - 1, volume.shape[-2] - 1], device=coords.device)
        sampled = F.grid_sample(volume, 2 * points / size - 1, align_corners=True)  # [B*h*w, 1, s, s]
        levels.append(sampled.reshape(batch, height, width, -1))
    return torch.cat(levels, dim=-1).permute(0, 3, 1, 2).contiguous()  # [B, 324, h, w]


def straightforward_attention(model: DecFlow, inp: torch.Tensor) -> torch.Tensor:
    att = model.att
    q, k = att.to_qk(inp).chunk(2, dim=1)
    batch, _, height, width = inp.shape
    q = q.reshape(batch, att.heads, -1, height, width).permute(0, 1, 3, 4, 2) * att.scale  # [B, n, h, w, d]
    k = k.reshape(batch, att.heads, -1, height, width).permute(0, 1, 3, 4, 2)
    sim = torch.einsum("bnxyd,bnuvd->bnxyuv", q, k)
    if att.position_only or att.position_and_content:
        position = att.pos_emb(q)
        sim = position if att.position_only else sim + position
    return sim.reshape(batch, att.heads, height * width, height * width).softmax(dim=-1)


def straightforward_forward(
    model: DecFlow,
    image1: torch.Tensor,
    image2: torch.Tensor,
    iters: int = ITERS,
    flow_init: torch.Tensor | None = None,
    test_mode: bool = False,
    amp_dtype: torch.dtype | None = None,
):
    """Same contract as `DecFlow.forward`; float32, or the reference's autocast regions in `amp_dtype`."""
    check_inputs(image1, image2)

    def region() -> contextlib.AbstractContextManager:
        return torch.autocast(image1.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    image1 = 2 * (image1 / 255.0) - 1.0
    image2 = 2 * (image2 / 255.0) - 1.0
    with region():
        fmap1, fmap2 = model.fnet(torch.cat([image1, image2])).chunk(2)
    pyramid = straightforward_pyramid(fmap1.float(), fmap2.float())
    with region():
        context = model.cnet(image1)
        semantic = model.change_dim(model.dad_encoder(image1))
        net, inp = model.res1(torch.cat([context, semantic], dim=1)).split([HIDDEN_DIM, CONTEXT_DIM], dim=1)
        net, inp = torch.tanh(net), torch.relu(inp)
        attention = straightforward_attention(model, inp)

    batch, _, height, width = image1.shape
    coords0 = coords_grid(batch, height // UPSAMPLE_FACTOR, width // UPSAMPLE_FACTOR, device=image1.device)
    coords1 = coords0 if flow_init is None else coords0 + flow_init
    coords1_head, net_head = coords1, net
    facial_preds, head_preds = [], []
    for _ in range(iters):
        coords1, coords1_head = coords1.detach(), coords1_head.detach()
        corr = straightforward_lookup(pyramid, coords1)
        with region():
            net, mask, delta = model.update_block(net, inp, corr, coords1 - coords0, attention)
        coords1 = coords1 + delta.float()
        facial_preds.append(convex_upsample(coords1 - coords0, mask))
        corr = straightforward_lookup(pyramid, coords1_head)
        with region():
            net_head, mask, delta = model.update_block_head(net_head, inp, corr, coords1_head - coords0, attention)
        coords1_head = coords1_head + delta.float()
        head_preds.append(convex_upsample(coords1_head - coords0, mask))
    if not test_mode:
        return facial_preds, head_preds
    facial, head = facial_preds[-1], head_preds[-1]
    return DecFlowOutput(
        facial=facial,
        head=head,
        expression=facial - head,
        facial_low=coords1 - coords0,
        head_low=coords1_head - coords0,
    )
