"""The straightforward DecFlow forward: the spec's steps one by one, no shortcuts.

It runs the same modules (and weights) as `DecFlow.forward` but as the reference does:
the attention matrix as one einsum + softmax, a separate correlation lookup for each
decoder, the plain update block (whole GRU input convolved every iteration, mask head every
iteration) and convex upsampling of both decoders at every iteration, in fp32. The fast path
must agree with it (tests) and beat it (benchmarks).
"""
from __future__ import annotations

import torch

from core.corr import CorrBlock, coords_grid
from core.network import (CONTEXT_DIM, CORR_LEVELS, CORR_RADIUS, HIDDEN_DIM, UPSAMPLE_FACTOR, DecFlow,
                          DecFlowOutput, convex_upsample)


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


def straightforward_forward(model: DecFlow, image1: torch.Tensor, image2: torch.Tensor, iters: int = 12,
                            flow_init: torch.Tensor | None = None, test_mode: bool = False):
    """Same contract as `DecFlow.forward` (fp32 only)."""
    model.check_inputs(image1, image2)
    image1 = 2 * (image1 / 255.0) - 1.0
    image2 = 2 * (image2 / 255.0) - 1.0
    fmap1, fmap2 = model.fnet(torch.cat([image1, image2])).chunk(2)
    corr_fn = CorrBlock(fmap1.float(), fmap2.float(), num_levels=CORR_LEVELS, radius=CORR_RADIUS)
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
        corr = corr_fn(coords1)
        net, mask, delta = model.update_block(net, inp, corr, coords1 - coords0, attention)
        coords1 = coords1 + delta
        facial_preds.append(convex_upsample(coords1 - coords0, mask))
        corr = corr_fn(coords1_head)
        net_head, mask, delta = model.update_block_head(net_head, inp, corr, coords1_head - coords0, attention)
        coords1_head = coords1_head + delta
        head_preds.append(convex_upsample(coords1_head - coords0, mask))
    if not test_mode:
        return facial_preds, head_preds
    facial, head = facial_preds[-1], head_preds[-1]
    return DecFlowOutput(facial=facial, head=head, expression=facial - head,
                         facial_low=coords1 - coords0, head_low=coords1_head - coords0)
