"""The GMA update block: motion encoder, aggregation, separable ConvGRU, flow and mask heads.

DecFlow runs two of these with separate weights: `update_block` for the full facial flow
and `update_block_head` for the rigid head flow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from core.gma import Aggregate
from core.precision import inference_cast_dtype


class MotionEncoder(nn.Module):
    """Correlation features + current flow -> motion features (`encoder`)."""

    def __init__(self, *, corr_channels: int, out_channels: int = 128) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.convc1 = nn.Conv2d(corr_channels, 256, 1)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        # The flow itself is appended to the output, hence 2 channels fewer here.
        self.conv = nn.Conv2d(192 + 64, out_channels - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        # flow: [B, 2, h, w], corr: [B, corr_channels, h, w] -> [B, out_channels, h, w]
        cor = F.relu_(self.convc2(F.relu_(self.convc1(corr))))
        flo = F.relu_(self.convf2(F.relu_(self.convf1(flow))))
        out = F.relu_(self.conv(torch.cat([cor, flo], dim=1)))
        # under autocast the float32 flow joins in the convolutions' dtype (they would cast it anyway)
        return torch.cat([out, flow.to(out.dtype)], dim=1)


@dataclass
class GRUPass:
    """One gate pass of SepConvGRU with the constant context input already applied.

    Gate pre-activations are `conv([h, x]) = conv_h(h) + conv_motion(motion) + conv_context(inp)`;
    the context part does not change across iterations, so it is computed once.
    """

    weight_zr: torch.Tensor  # [2*hidden, hidden + motion, kh, kw]: z and r gates, one conv
    weight_q: torch.Tensor  # [hidden, hidden + motion, kh, kw]
    context_zr: torch.Tensor  # [B, 2*hidden, h, w] context part + biases
    context_q: torch.Tensor  # [B, hidden, h, w]
    padding: tuple[int, int]


class SepConvGRU(nn.Module):
    """ConvGRU run twice: with 1x5 kernels, then with 5x1 kernels (`gru`).

    Its input is `cat([context, motion])`; `forward` is the plain formulation,
    `prepare` + `step` the equivalent one that convolves the constant context once.
    """

    PASSES = (("1", (1, 5), (0, 2)), ("2", (5, 1), (2, 0)))  # suffix, kernel, padding

    def __init__(self, *, hidden_dim: int, input_dim: int) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        channels = hidden_dim + input_dim
        for suffix, kernel, padding in self.PASSES:
            for gate in ("z", "r", "q"):
                self.add_module(f"conv{gate}{suffix}", nn.Conv2d(channels, hidden_dim, kernel, padding=padding))

    @staticmethod
    def _step(h: torch.Tensor, x: torch.Tensor, convz: nn.Module, convr: nn.Module, convq: nn.Module) -> torch.Tensor:
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(convz(hx))
        r = torch.sigmoid(convr(hx))
        q = torch.tanh(convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self._step(h, x, self.convz1, self.convr1, self.convq1)
        return self._step(h, x, self.convz2, self.convr2, self.convq2)

    def prepare(self, context: torch.Tensor) -> list[GRUPass]:
        """Split the gate weights for `step` and convolve the context `[B, C, h, w]` once
        (C = the leading input channels). Differentiable with respect to the weights."""
        hidden, split = self.hidden_dim, self.hidden_dim + context.shape[1]
        passes = []
        for suffix, _, padding in self.PASSES:
            convs = [getattr(self, f"conv{gate}{suffix}") for gate in ("z", "r", "q")]
            weight = torch.cat([c.weight for c in convs])  # [3*hidden, channels, kh, kw]
            bias = torch.cat([c.bias for c in convs])
            recurrent = torch.cat([weight[:, :hidden], weight[:, split:]], dim=1)
            # inference: cast once, not at every step. Under autograd a shared low-precision copy
            # would sum every step's gradient in that precision, so each step casts its own.
            cast_dtype = inference_cast_dtype(context.device.type)
            if cast_dtype is not None:
                recurrent = recurrent.to(cast_dtype)
            context_terms = F.conv2d(context, weight[:, hidden:split], bias, padding=padding)
            passes.append(
                GRUPass(
                    weight_zr=recurrent[: 2 * hidden].contiguous(),
                    weight_q=recurrent[2 * hidden :].contiguous(),
                    context_zr=context_terms[:, : 2 * hidden],
                    context_q=context_terms[:, 2 * hidden :],
                    padding=padding,
                )
            )
        return passes

    def step(self, h: torch.Tensor, motion: torch.Tensor, passes: list[GRUPass]) -> torch.Tensor:
        """Same as `forward(h, cat([context, motion]))` for the context given to `prepare`."""
        for p in passes:  # in-place activations on fresh conv outputs: fewer passes over memory
            zr = F.conv2d(torch.cat([h, motion], dim=1), p.weight_zr, padding=p.padding).add_(p.context_zr).sigmoid_()
            z, r = zr.split(self.hidden_dim, dim=1)
            q = F.conv2d(torch.cat([r * h, motion], dim=1), p.weight_q, padding=p.padding).add_(p.context_q).tanh_()
            h = torch.lerp(h, q, z)  # (1 - z) * h + z * q
        return h


class FlowHead(nn.Module):
    """Hidden state -> flow update `[B, 2, h, w]`."""

    def __init__(self, *, in_channels: int, hidden_dim: int = 256) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_dim, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu_(self.conv1(x)))


class UpsampleMaskHead(nn.Sequential):
    """Hidden state -> convex-upsampling logits `[B, 9*f*f, h, w]` (`mask`), already x0.25."""

    def __init__(self, *, in_channels: int, factor: int = 8, hidden_dim: int = 256) -> None:
        super().__init__(
            nn.Conv2d(in_channels, hidden_dim, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, 9 * factor * factor, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.25 * super().forward(x)  # the authors scale the logits by 1/4


class GMAUpdateBlock(nn.Module):
    """One recurrent refinement step of a decoder head."""

    def __init__(
        self,
        *,
        corr_channels: int,
        hidden_dim: int = 128,
        context_dim: int = 128,
        heads: int = 1,
        upsample_factor: int = 8,
    ) -> None:
        super().__init__()
        self.encoder = MotionEncoder(corr_channels=corr_channels, out_channels=128)
        motion = self.encoder.out_channels
        # GRU input: context + motion + globally aggregated motion.
        self.gru = SepConvGRU(hidden_dim=hidden_dim, input_dim=context_dim + 2 * motion)
        self.flow_head = FlowHead(in_channels=hidden_dim, hidden_dim=256)
        self.mask = UpsampleMaskHead(in_channels=hidden_dim, factor=upsample_factor)
        self.aggregator = Aggregate(dim=motion, heads=heads, dim_head=motion)

    def forward(
        self, net: torch.Tensor, inp: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor, attention: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Plain formulation of one step: (new hidden state, upsampling mask logits, delta flow).
        core.reference.straightforward_forward runs this; DecFlow.decode runs `prepare` + `step`."""
        motion = self.encoder(flow, corr)
        motion_global = self.aggregator(attention, motion)
        net = self.gru(net, torch.cat([inp, motion, motion_global], dim=1))
        return net, self.mask(net), self.flow_head(net)

    def prepare(self, inp: torch.Tensor) -> list[GRUPass]:
        """Per-forward work for `step`: the context part of the GRU gates."""
        return self.gru.prepare(inp)

    def step(
        self,
        net: torch.Tensor,
        prepared: list[GRUPass],
        motion: torch.Tensor,
        motion_global: torch.Tensor,
        *,
        with_mask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """`forward` split for speed: motion features come from `encoder`/`aggregator`
        (so that both decoders can aggregate in one pass), the mask only when asked for."""
        net = self.gru.step(net, torch.cat([motion, motion_global], dim=1), prepared)
        delta_flow = self.flow_head(net)
        return net, self.mask(net) if with_mask else None, delta_flow
