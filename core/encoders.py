"""Convolutional encoders of DecFlow: the feature/context encoder and the fusion block.

The feature encoder (`fnet`, instance norm) and the context encoder (`cnet`, batch norm)
share one architecture: a stride-2 7x7 stem and three stages of two residual blocks,
ending at 1/8 resolution. Parameter names follow the authors' checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from core.precision import under_autograd

NORM_LAYERS = ("instance", "batch", "none")


class InstanceNorm2d(nn.InstanceNorm2d):
    """`nn.InstanceNorm2d` without affine parameters; keeps channels-last input channels-last
    at inference on CPU.

    PyTorch's CPU instance-norm kernel returns channels-last input as NCHW, which sends every
    later layer of the encoder down the slower NCHW convolution path. Group norm with one
    group per channel is the same normalisation and has a channels-last kernel (several
    times faster here, float32 and bfloat16). Under autograd the instance-norm kernel's
    backward is the faster one (measured), so training keeps it, as does CUDA.

    Group norm's CPU kernel takes the variance in one pass (mean of squares minus squared
    mean), which loses precision when a channel's mean is large against its spread, as in
    trained encoders: 2e-2 off float64 at mean 30, std 0.5. Each channel is centred first
    (about 2 ms more per norm at 64x240x240 on 2 AVX2 cores, against 5 s for the forward).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            under_autograd()
            or x.device.type != "cpu"
            or x.dim() != 4
            or not x.is_contiguous(memory_format=torch.channels_last)
        ):
            return super().forward(x)
        centred = x - x.mean(dim=(2, 3), keepdim=True)  # [B, C, H, W], channels-last
        return F.group_norm(centred, x.shape[1], eps=self.eps)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return InstanceNorm2d(channels)  # no affine parameters, as in the checkpoints
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORM_LAYERS}, got {kind!r}")


class ResidualBlock(nn.Module):
    """conv3x3(stride)-norm-ReLU, conv3x3-norm-ReLU, plus a 1x1 projection when strided."""

    def __init__(self, *, in_channels: int, out_channels: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.norm1 = _norm(norm, out_channels)
        self.norm2 = _norm(norm, out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1:
            # The checkpoints store the shortcut norm twice: as `norm3` and as
            # `downsample.1` (the same module registered under two names).
            self.norm3 = _norm(norm, out_channels)
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place ReLUs on fresh tensors: large activations are not allocated twice.
        y = F.relu_(self.norm1(self.conv1(x)))
        y = F.relu_(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return F.relu_(x + y)


class BasicEncoder(nn.Module):
    """Image -> features at 1/8 resolution (`fnet` and `cnet` of the checkpoints)."""

    def __init__(self, *, out_channels: int = 256, norm: str = "batch", dropout: float = 0.0) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.norm1 = _norm(norm, 64)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        widths_and_strides = ((64, 1), (96, 2), (128, 2))
        in_channels = 64
        for index, (width, stride) in enumerate(widths_and_strides, start=1):
            blocks = nn.Sequential(
                ResidualBlock(in_channels=in_channels, out_channels=width, stride=stride, norm=norm),
                ResidualBlock(in_channels=width, out_channels=width, stride=1, norm=norm),
            )
            setattr(self, f"layer{index}", blocks)
            in_channels = width
        self.conv2 = nn.Conv2d(in_channels, out_channels, 1)
        self.dropout = nn.Dropout2d(p=dropout) if dropout > 0 else None
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d)):
                if module.weight is not None:
                    nn.init.constant_(module.weight, 1)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, 3, H, W] -> [B, out_channels, H/8, W/8]
        x = F.relu_(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.conv2(x)
        if self.training and self.dropout is not None:
            x = self.dropout(x)
        return x


class FusionBlock(nn.Module):
    """Residual fusion of context and semantic features (`res1` of the checkpoints)."""

    def __init__(self, *, in_channels: int = 512, out_channels: int = 256) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.adjustment = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu_(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu_(y + self.adjustment(x))
