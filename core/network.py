"""DecFlow: a GMA optical-flow network with a facial-flow and a head-flow decoder.

The facial decoder (`update_block`) estimates the full motion of the face, the head
decoder (`update_block_head`) its rigid head motion; expression flow is their difference.
Both decoders share the correlation pyramid, the context features and the attention.

`DecFlow.forward` is the fast path (one lookup and one attention pass for both decoders,
fused GRU input convolutions, only the last flow upsampled at test time). The same
algorithm step by step, with the plain per-block `forward` methods, is
`core.reference.straightforward_forward`; the tests hold the two to the same flow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from core.corr import CORR_LEVELS, CORR_RADIUS, CorrBlock, coords_grid, corr_levels_stored_from
from core.defaults import ITERS
from core.encoders import BasicEncoder, FusionBlock
from core.gma import Attention
from core.precision import autocast, volume_dtype
from core.semantic import SemanticEncoder
from core.update import GMAUpdateBlock
from core.utils.padder import UPSAMPLE_FACTOR, check_flow_init, check_inputs


@dataclass(frozen=True)
class DecFlowConfig:
    """Architecture options of DecFlow (the paper's configuration by default).

    A field whose metadata says `inference: False` changes only training (it is not
    compared with a checkpoint's description at inference).
    """

    num_heads: int = 1
    position_only: bool = False
    position_and_content: bool = False
    dropout: float = field(default=0.0, metadata={"inference": False})  # fnet/cnet Dropout2d in training


# Fixed sizes of the published architecture (the checkpoints depend on all of them; the pyramid's
# CORR_LEVELS and CORR_RADIUS are in core.corr, the input stride UPSAMPLE_FACTOR in core.utils.padder).
FEATURE_DIM = 256  # fnet output channels, correlated pairwise
HIDDEN_DIM = 128  # GRU hidden state: first half of the fused context
CONTEXT_DIM = 128  # GRU context input: second half of the fused context
SEMANTIC_PROJECTION_DIM = 256  # change_dim output, concatenated with the cnet output
MAX_RELATIVE_POSITIONS = 160  # rows/columns covered by the relative-position tables


@dataclass
class DecFlowOutput:
    """Test-mode result; every flow is `[B, 2, H, W]` except the `*_low` ones (`[B, 2, H/8, W/8]`)."""

    facial: torch.Tensor
    head: torch.Tensor
    expression: torch.Tensor
    facial_low: torch.Tensor
    head_low: torch.Tensor


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor, factor: int = UPSAMPLE_FACTOR) -> torch.Tensor:
    """Upsample `[B, 2, h, w]` flow to `[B, 2, f*h, f*w]` as a convex combination of 3x3 neighbours.

    `mask` holds `[B, 9*f*f, h, w]` logits ordered (neighbour k, sub-row i, sub-col j);
    neighbour k = 3 * (dy + 1) + (dx + 1), zero padding at the border. Flow values are
    scaled by f.
    """
    batch, _, height, width = flow.shape
    weights = mask.float().reshape(batch, 1, 9, factor * factor, height * width).softmax(dim=2)
    neighbours = F.unfold(factor * flow, 3, padding=1).reshape(batch, 2, 9, 1, height * width)  # k = 3 dy + dx
    up = (weights * neighbours).sum(dim=2).reshape(batch, 2, factor, factor, height, width)  # [B, 2, i, j, h, w]
    up = up.permute(0, 1, 4, 2, 5, 3)  # [B, 2, h, i, w, j]
    return up.reshape(batch, 2, factor * height, factor * width)


def normalise_image(image: torch.Tensor) -> torch.Tensor:
    """RGB 0..255 -> -1..1, channels-last."""
    return (2 * (image / 255.0) - 1.0).contiguous(memory_format=torch.channels_last)


def start_coordinates(
    coords0: torch.Tensor, flow_init: tuple[torch.Tensor | None, torch.Tensor | None]
) -> list[torch.Tensor]:
    """Starting coordinates (facial, head) `[B, 2, h, w]`; one shared tensor when both decoders
    start alike (then one lookup serves both)."""
    facial_init, head_init = flow_init

    def start_from(init: torch.Tensor | None) -> torch.Tensor:
        return coords0 if init is None else (coords0 + init).contiguous(memory_format=torch.channels_last)

    coords = [start_from(facial_init)]
    coords.append(coords[0] if head_init is facial_init else start_from(head_init))
    return coords


class DecFlow(nn.Module):
    """DecFlow network. Images are `[B, 3, H, W]` RGB floats in 0..255, H and W multiples
    of 8 and at least 128 px."""

    def __init__(self, config: DecFlowConfig = DecFlowConfig()) -> None:
        super().__init__()
        self.config = config
        num_heads = config.num_heads

        # Registration order follows the authors' state dict.
        self.fnet = BasicEncoder(out_channels=FEATURE_DIM, norm="instance", dropout=config.dropout)
        self.cnet = BasicEncoder(out_channels=HIDDEN_DIM + CONTEXT_DIM, norm="batch", dropout=config.dropout)
        corr_channels = CORR_LEVELS * (2 * CORR_RADIUS + 1) ** 2
        decoder = dict(
            corr_channels=corr_channels,
            hidden_dim=HIDDEN_DIM,
            context_dim=CONTEXT_DIM,
            heads=num_heads,
            upsample_factor=UPSAMPLE_FACTOR,
        )
        self.update_block_head = GMAUpdateBlock(**decoder)
        self.update_block = GMAUpdateBlock(**decoder)
        self.att = Attention(
            dim=CONTEXT_DIM,
            heads=num_heads,
            dim_head=CONTEXT_DIM,
            max_positions=MAX_RELATIVE_POSITIONS,
            position_only=config.position_only,
            position_and_content=config.position_and_content,
        )
        self.dad_encoder = SemanticEncoder()
        self.change_dim = nn.Conv2d(SemanticEncoder.out_channels, SEMANTIC_PROJECTION_DIM, 1)
        self.res1 = FusionBlock(
            in_channels=self.cnet.out_channels + SEMANTIC_PROJECTION_DIM, out_channels=HIDDEN_DIM + CONTEXT_DIM
        )
        # The semantic encoder and the fusion block never train; the rest trains in stage 1
        # (core.training.stages.set_trainable switches to stage 2).
        self.dad_encoder.requires_grad_(False)
        self.res1.requires_grad_(False)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        image1: torch.Tensor,
        image2: torch.Tensor,
        iters: int = ITERS,
        flow_init: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        test_mode: bool = False,
        *,
        amp_dtype: torch.dtype | None = None,
        alternate_corr: bool = False,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]] | DecFlowOutput:
        """Estimate facial and head flow from image1 to image2.

        Training mode returns `(facial_predictions, head_predictions)`, each a list of
        `iters` upsampled flows `[B, 2, H, W]`. `test_mode=True` returns a DecFlowOutput
        with only the final flows upsampled. `flow_init` (`[B, 2, H/8, W/8]`) initialises
        both decoders (as the reference does), or give one per decoder as a pair
        `(facial_init, head_init)`, e.g. a previous result's `(facial_low, head_low)`.

        Run-time options (the same weights serve every choice): `amp_dtype` autocasts the
        convolutions to that dtype (None: float32; the scripts' `--mixed_precision` gives
        float16 on CUDA), `alternate_corr` is the memory-bounded mode (correlation and
        attention computed in chunks, on the fly: same flow, less memory, slower).
        """
        check_inputs(image1, image2)
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        return self.forward_unchecked(
            image1,
            image2,
            iters=iters,
            flow_init=check_flow_init(flow_init, image1.shape),
            test_mode=test_mode,
            amp_dtype=amp_dtype,
            alternate_corr=alternate_corr,
        )

    def forward_unchecked(
        self,
        image1: torch.Tensor,
        image2: torch.Tensor,
        *,
        iters: int,
        flow_init: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
        test_mode: bool = False,
        amp_dtype: torch.dtype | None = None,
        alternate_corr: bool = False,
        stored_from: int | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]] | DecFlowOutput:
        """`forward` without its input checks (`check_inputs`, `check_flow_init` and `iters >= 1`
        are the caller's), so without a host synchronisation (a CUDA graph can capture it): encode,
        correlate and attend, run the two decoders, return the flows (steps 1-5 of
        `core.reference.straightforward_forward`). `stored_from` overrides the correlation-storage
        policy (`core.corr.corr_levels_stored_from`)."""
        batch, _, height, width = image1.shape
        # channels-last activations suit oneDNN (CPU) and tensor-core (CUDA) convolutions;
        # the layout propagates through every convolution of the network
        image1, image2 = (normalise_image(image) for image in (image1, image2))
        with autocast(image1.device, amp_dtype):
            fmap1, fmap2 = self.fnet(torch.cat([image1, image2], dim=0)).split([batch, batch])  # [B, 256, h, w] each
            net, inp, attention = self.encode_context(image1, alternate_corr=alternate_corr)
        low = (height // UPSAMPLE_FACTOR, width // UPSAMPLE_FACTOR)
        if stored_from is None:
            stored_from = corr_levels_stored_from(
                batch, low[0] * low[1], image1.device, amp_dtype=amp_dtype, alternate_corr=alternate_corr
            )
        corr_fn = CorrBlock(
            fmap1.float(),
            fmap2.float(),
            num_levels=CORR_LEVELS,
            radius=CORR_RADIUS,
            dense_from_level=stored_from,
            dtype=volume_dtype(image1.device, amp_dtype),
        )
        # [B, 2, h, w], x first; channels-last like everything fed to the convolutions
        coords0 = coords_grid(batch, *low, device=image1.device).contiguous(memory_format=torch.channels_last)
        coords = start_coordinates(coords0, flow_init)
        predictions, coords = self.decode(
            corr_fn, net, inp, attention, coords0, coords, iters=iters, test_mode=test_mode, amp_dtype=amp_dtype
        )
        if not test_mode:
            return predictions
        facial, head = predictions[0][-1], predictions[1][-1]
        return DecFlowOutput(
            facial=facial,
            head=head,
            expression=facial - head,
            facial_low=coords[0] - coords0,
            head_low=coords[1] - coords0,
        )

    def encode_context(self, image1: torch.Tensor, *, alternate_corr: bool = False):
        """Normalised image 1 -> (hidden state, context input, attention).

        The attention is a `[B, heads, h*w, h*w]` matrix, or in memory-bounded mode
        (`alternate_corr`) a ChunkedAttention that supports the same `attention @ values`.
        """
        context = self.cnet(image1)  # [B, 256, h, w]
        semantic = self.change_dim(self.dad_encoder(image1))  # [B, 256, h, w]
        fused = self.res1(torch.cat([context, semantic], dim=1))  # [B, 256, h, w]
        net, inp = fused.split([HIDDEN_DIM, CONTEXT_DIM], dim=1)
        net, inp = torch.tanh(net), torch.relu(inp)
        attention = self.att(inp, materialise=not alternate_corr)  # [B, heads, h*w, h*w]
        return net, inp, attention

    def decode(
        self,
        corr_fn: CorrBlock,
        net: torch.Tensor,
        inp: torch.Tensor,
        attention: torch.Tensor,
        coords0: torch.Tensor,
        coords: list[torch.Tensor],
        *,
        iters: int,
        test_mode: bool,
        amp_dtype: torch.dtype | None = None,
    ) -> tuple[tuple[list[torch.Tensor], list[torch.Tensor]], list[torch.Tensor]]:
        """The recurrence of both decoders (facial, head) from `coords` (`[B, 2, h, w]` each,
        float32): (upsampled predictions per decoder, final coordinates per decoder).

        One iteration is, per decoder, the plain `GMAUpdateBlock.forward` (as the loop of
        `core.reference.straightforward_forward` calls it), split so that both decoders share
        one correlation lookup and one pass over the attention matrix."""
        decoders = (self.update_block, self.update_block_head)  # facial, head
        predictions: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        # One autocast region for the whole recurrence (weights cast once per forward at inference).
        with autocast(coords0.device, amp_dtype):
            prepared = [decoder.prepare(inp) for decoder in decoders]
            hidden = [net, net]
            for itr in range(iters):
                upsample = not test_mode or itr == iters - 1  # test mode: only the result
                shared = coords[0] is coords[1]  # same start: one lookup serves both decoders
                coords = [c.detach() for c in coords]
                with torch.autocast(device_type=coords0.device.type, enabled=False):
                    # float32; both decoders' windows in one lookup
                    if shared:
                        (corr,) = corr_fn(coords[:1])  # [B, 324, h, w]
                        corrs = [corr, corr]
                    else:
                        corrs = corr_fn(coords)
                motion = [decoder.encoder(c - coords0, corr) for decoder, c, corr in zip(decoders, coords, corrs)]
                # One pass over the attention matrix aggregates both decoders' values.
                values = [decoder.aggregator.values(m) for decoder, m in zip(decoders, motion)]
                attended = (attention @ torch.cat(values, dim=-1)).chunk(len(decoders), dim=-1)
                for i, decoder in enumerate(decoders):
                    hidden[i], mask, delta = decoder.step(
                        hidden[i],
                        prepared[i],
                        motion[i],
                        decoder.aggregator.combine(motion[i], attended[i]),
                        with_mask=upsample,
                    )
                    coords[i] = coords[i] + delta.float()
                    if upsample:
                        predictions[i].append(convex_upsample(coords[i] - coords0, mask))
        return predictions, coords
