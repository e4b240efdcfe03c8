"""Facial semantic-aware encoder (`dad_encoder`): a ResNet-50 trunk in pytorchcv layout.

Only the stem and the first two stages run (512 channels at 1/8 resolution); the third
stage (`model.3`) is kept so that the authors' checkpoints load key for key, but it is
never evaluated. This is ResNet v1: a downsampling unit strides in its first 1x1 conv.
`semantic_state_from_resnet50` maps ImageNet ResNet-50 weights in torchvision's or
pytorchcv's naming onto it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from core.errors import UserError


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm, optionally followed by ReLU (pytorchcv `ConvBlock`)."""

    def __init__(
        self, *, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, relu: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return torch.relu_(x) if self.relu else x  # in place: a fresh BatchNorm output


class Stem(nn.Module):
    """conv7x7 stride 2 + BN + ReLU, then 3x3 max-pool stride 2: 1/4 resolution."""

    def __init__(self, *, out_channels: int = 64) -> None:
        super().__init__()
        self.conv = ConvBN(in_channels=3, out_channels=out_channels, kernel_size=7, stride=2)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


class Bottleneck(nn.Module):
    def __init__(self, *, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        mid = out_channels // 4  # ResNet bottleneck expansion
        self.body = nn.Sequential()
        self.body.add_module("conv1", ConvBN(in_channels=in_channels, out_channels=mid, kernel_size=1, stride=stride))
        self.body.add_module("conv2", ConvBN(in_channels=mid, out_channels=mid, kernel_size=3))
        self.body.add_module("conv3", ConvBN(in_channels=mid, out_channels=out_channels, kernel_size=1, relu=False))
        self.identity_conv: ConvBN | None = None
        if in_channels != out_channels or stride != 1:
            self.identity_conv = ConvBN(
                in_channels=in_channels, out_channels=out_channels, kernel_size=1, stride=stride, relu=False
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.identity_conv is None else self.identity_conv(x)
        return torch.relu_(self.body(x) + identity)


def _stage(*, in_channels: int, out_channels: int, units: int, stride: int) -> nn.Sequential:
    stage = nn.Sequential()
    for index in range(units):
        stage.add_module(
            f"unit{index + 1}",
            Bottleneck(
                in_channels=in_channels if index == 0 else out_channels,
                out_channels=out_channels,
                stride=stride if index == 0 else 1,
            ),
        )
    return stage


class SemanticEncoder(nn.Module):
    """ResNet-50 stem + stages 1-2 on the [-1, 1] image: [B, 3, H, W] -> [B, 512, H/8, W/8]."""

    out_channels = 512
    used_stages = 3  # stem, stage 1, stage 2: 1/8 resolution

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(
            Stem(out_channels=64),
            _stage(in_channels=64, out_channels=256, units=3, stride=1),
            _stage(in_channels=256, out_channels=512, units=4, stride=2),
            # Stage 3 exists only for checkpoint compatibility; forward never runs it.
            _stage(in_channels=512, out_channels=1024, units=6, stride=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.model[: self.used_stages]:
            x = stage(x)
        return x


# ---------------------------------------------------------------- ImageNet ResNet-50 weights
def _semantic_key_from_torchvision(key: str) -> str | None:
    """Map a torchvision ResNet-50 key to the pytorchcv layout (None: not used)."""
    if key.startswith("conv1."):
        return "model.0.conv.conv." + key[len("conv1.") :]
    if key.startswith("bn1."):
        return "model.0.conv.bn." + key[len("bn1.") :]
    match = re.match(r"^layer([123])\.(\d+)\.(.+)$", key)
    if not match:
        return None  # layer4, fc
    stage, unit, rest = int(match[1]), int(match[2]) + 1, match[3]
    prefix = f"model.{stage}.unit{unit}."
    conv = re.match(r"^(conv|bn)([123])\.(.+)$", rest)
    if conv:
        part = "conv" if conv[1] == "conv" else "bn"
        return f"{prefix}body.conv{conv[2]}.{part}.{conv[3]}"
    down = re.match(r"^downsample\.([01])\.(.+)$", rest)
    if down:
        return f"{prefix}identity_conv.{'conv' if down[1] == '0' else 'bn'}.{down[2]}"
    return None


def _semantic_key_from_pytorchcv(key: str) -> str | None:
    if key.startswith("features.init_block."):
        return "model.0." + key[len("features.init_block.") :]
    match = re.match(r"^features\.stage([123])\.(.+)$", key)
    return f"model.{match[1]}.{match[2]}" if match else None


def semantic_state_from_resnet50(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Convert ResNet-50 ImageNet weights (torchvision, pytorchcv or DecFlow naming) to
    `dad_encoder` keys (without the `dad_encoder.` prefix). `state` has no `module.`
    prefix (core.checkpoint.read_state_dict strips it)."""
    if "conv1.weight" in state:
        convert = _semantic_key_from_torchvision
    elif "features.init_block.conv.conv.weight" in state:
        convert = _semantic_key_from_pytorchcv
    elif any(k.startswith("dad_encoder.") for k in state):
        convert = lambda k: k[len("dad_encoder.") :] if k.startswith("dad_encoder.") else None  # noqa: E731
    else:
        raise UserError(f"{source}: not a ResNet-50 state dict in torchvision or pytorchcv naming")
    out = {}
    for key, value in state.items():
        new = convert(key)
        if new is not None:
            out[new] = value
    return out
