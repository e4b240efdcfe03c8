"""The micro-expression classifiers: STSTNet, its many-folds-at-once form, and the registry.

`STSTNet` is the shallow triple-stream network as its public PyTorch code (christy1206/STSTNet,
`main.py`) computes it: three streams of 3x3 convolutions (3, 5 and 8 channels, padding 2) on the
same input, each followed by ReLU, *then* batch norm, 3x3 max-pool (stride 3, padding 1) and
dropout; the 16 channels concatenated, 2x2 average pool, one linear layer (400 -> classes at
28x28). Its state-dict keys and shapes are that code's (`conv1`..`conv3`, `bn1`..`bn3`, `fc`), so its
released per-subject weights load with `strict=True`. Input scaling belongs to the recipe
(`core.mer.inputs`), not to the module.

`FoldedSTSTNet` holds F STSTNets (one per leave-one-subject-out fold) as stacked parameters, trained
together by one optimiser: the three streams share their input, so one convolution with 16 output
channels computes all three; each fold's full-resolution stage runs on its own batch (batch norm's
statistics its own), and the small pooled maps, the linear layers and Adam are batched over folds.
In training, that stage is `ConvReluNormPool`, one autograd function with a hand-written backward
(about twice as fast on a CPU as the same stage through PyTorch's modules; the same numbers to float
rounding).

`MODELS` maps a name to a builder `(num_classes, in_channels, size) -> nn.Module`; a user's module
plugs in by adding an entry (the protocol trains any entry, one fold at a time).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

STREAM_CHANNELS = (3, 5, 8)  # the three streams' widths, in their concatenation order
STREAMS = sum(STREAM_CHANNELS)  # 16 channels after the concatenation
KERNEL = 3  # every stream's convolution is 3x3
CONV_PADDING = 2  # the code's padding: a 28x28 input gives 30x30
POOL = 3  # max-pool: kernel and stride 3
POOL_PADDING = 1
AVG_POOL = 2  # average pool: kernel and stride 2
INPUT_SIZE = 28  # STSTNet's input side
BN_EPS = 1e-5  # nn.BatchNorm2d's defaults, which the code keeps
BN_MOMENTUM = 0.1


def pool_side(size: int) -> int:
    """Side of the max-pooled maps (where dropout acts) for a `size` x `size` input (10 for 28)."""
    conv = size + 2 * CONV_PADDING - KERNEL + 1
    return (conv + 2 * POOL_PADDING - POOL) // POOL + 1


def feature_side(size: int) -> int:
    """Side of the average-pooled maps for a `size` x `size` input (5 for STSTNet's 28)."""
    return pool_side(size) // AVG_POOL


class STSTNet(nn.Module):
    """STSTNet: `[B, in_channels, size, size]` -> logits `[B, num_classes]`."""

    def __init__(self, *, num_classes: int = 3, dropout: float = 0.5, in_channels: int = 3, size: int = INPUT_SIZE):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STREAM_CHANNELS[0], KERNEL, padding=CONV_PADDING)
        self.conv2 = nn.Conv2d(in_channels, STREAM_CHANNELS[1], KERNEL, padding=CONV_PADDING)
        self.conv3 = nn.Conv2d(in_channels, STREAM_CHANNELS[2], KERNEL, padding=CONV_PADDING)
        self.bn1 = nn.BatchNorm2d(STREAM_CHANNELS[0])
        self.bn2 = nn.BatchNorm2d(STREAM_CHANNELS[1])
        self.bn3 = nn.BatchNorm2d(STREAM_CHANNELS[2])
        self.maxpool = nn.MaxPool2d(POOL, stride=POOL, padding=POOL_PADDING)
        self.avgpool = nn.AvgPool2d(AVG_POOL, stride=AVG_POOL)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(STREAMS * feature_side(size) ** 2, num_classes)

    def _stream(self, x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
        return self.dropout(self.maxpool(bn(torch.relu(conv(x)))))  # [B, c, S', S']

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        streams = [
            self._stream(x, self.conv1, self.bn1),
            self._stream(x, self.conv2, self.bn2),
            self._stream(x, self.conv3, self.bn3),
        ]
        pooled = self.avgpool(torch.cat(streams, dim=1))  # [B, 16, side, side]
        return self.fc(pooled.flatten(1))  # [B, num_classes]


def _streams(model: STSTNet, layer: str, name: str) -> torch.Tensor:
    """`[16, ...]`: the three streams' `{layer}{i}.{name}` (a parameter or buffer), in stream order."""
    return torch.cat([getattr(model, f"{layer}{i}").state_dict()[name] for i in (1, 2, 3)])


class ConvReluNormPool(torch.autograd.Function):
    """One fold's full-resolution stage in training, `[b, C, S, S]` -> `[b, 16, P, P]`: the three streams'
    convolution, ReLU, batch norm with the batch's statistics, and the 3x3 max-pool; also returns the batch's
    mean and unbiased variance `[16]` for the caller's running statistics.

    What makes it cheaper than PyTorch's modules (memory passes over the `[b, 16, S + 2, S + 2]` maps,
    which are all the time on a CPU):
    - batch norm is a per-channel affine map, increasing where its weight is >= 0 and decreasing where it
      is < 0, so it commutes with the max-pool (a min-pool for the decreasing channels): the pool runs on
      the ReLU's output and only the pooled maps are normalised;
    - the backward is written out: through the pool, the gradient reaches the batch-norm input only at
      each window's chosen element, and through the batch's mean and variance every element as
      `c0 + c1 * h` (per-channel constants), both zero where the ReLU was off;
    - the maps are channels-last, so that the pool, the sums and the convolution's backward run on
      contiguous channels.

    Where a batch-norm weight is exactly 0 (never in training from PyTorch's initial 1), every element of a
    window is equal after the normalisation; its gradient is then the right-hand derivative (the window's
    largest element), where PyTorch's max-pool would take the window's first element.
    """

    @staticmethod
    def forward(ctx, x, conv_weight, conv_bias, bn_weight, bn_bias):  # noqa: ANN001, ANN205 (autograd's signature)
        x = x.contiguous(memory_format=torch.channels_last)
        h = F.conv2d(x, conv_weight, conv_bias, padding=CONV_PADDING).clamp_(min=0)  # [b, 16, S + 2, S + 2]
        channels = h.shape[1]
        flat = h.permute(0, 2, 3, 1).reshape(-1, channels)  # [M, 16]: the same memory, channels-last
        ones = h.new_ones(flat.shape[0])
        count = flat.shape[0]
        mean = ones @ flat / count  # [16]; a matrix-vector product is the fastest sum over M on a CPU
        var = (torch.linalg.vecdot(flat, flat, dim=0) / count - mean * mean).clamp_(min=0)  # biased, as it normalises
        inv_std = (var + BN_EPS).rsqrt()
        sign = torch.where(bn_weight < 0, -1.0, 1.0).to(h.dtype).view(1, channels, 1, 1)
        flipped = bool((bn_weight < 0).any())
        pooled, index = F.max_pool2d_with_indices(h * sign if flipped else h, POOL, stride=POOL, padding=POOL_PADDING)
        chosen = pooled * sign if flipped else pooled  # [b, 16, P, P]: h at each window's chosen element
        normalised = (chosen - mean.view(1, -1, 1, 1)) * inv_std.view(1, -1, 1, 1)
        ctx.save_for_backward(x, conv_weight, h, index, chosen, normalised, mean, inv_std, bn_weight)
        unbiased = var * (count / (count - 1))
        ctx.mark_non_differentiable(mean, unbiased)
        out = normalised * bn_weight.view(1, -1, 1, 1) + bn_bias.view(1, -1, 1, 1)
        return out.contiguous(), mean, unbiased  # the small pooled maps in the usual layout

    @staticmethod
    def backward(ctx, grad, _grad_mean, _grad_var):  # noqa: ANN001, ANN205
        x, conv_weight, h, index, chosen, normalised, mean, inv_std, bn_weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)  # as the maps it goes back to
        count = h.shape[0] * h.shape[2] * h.shape[3]
        dims = (0, 2, 3)
        grad_bn_bias = grad.sum(dims)
        grad_bn_weight = (grad * normalised).sum(dims)
        grad_normalised = grad * bn_weight.view(1, -1, 1, 1)  # [b, 16, P, P]
        mean_grad = grad_normalised.sum(dims) / count  # [16]: the gradient through the batch's mean ...
        mean_grad_x = (grad_normalised * normalised).sum(dims) / count  # ... and through its variance
        c1 = (-mean_grad_x * inv_std * inv_std).view(1, -1, 1, 1)
        c0 = (inv_std * (mean_grad_x * mean * inv_std - mean_grad)).view(1, -1, 1, 1)
        at_chosen = (grad_normalised * inv_std.view(1, -1, 1, 1)).masked_fill_(chosen <= 0, 0)  # the ReLU's gate
        grad_h = torch.ops.aten.max_pool2d_with_indices_backward(
            at_chosen, h, [POOL, POOL], [POOL, POOL], [POOL_PADDING] * 2, [1, 1], False, index
        )  # [b, 16, S + 2, S + 2], zero but at the chosen elements
        grad_z = grad_h.addcmul_(h, c1).addcmul_(torch.sign(h), c0)  # sign(h): 1 where the ReLU was on, else 0
        _, grad_conv_weight, grad_conv_bias = torch.ops.aten.convolution_backward(
            grad_z,
            x,
            conv_weight,
            [conv_weight.shape[0]],
            [1, 1],
            [CONV_PADDING] * 2,
            [1, 1],
            False,
            [0, 0],
            1,
            [False, True, True],
        )
        return None, grad_conv_weight, grad_conv_bias, grad_bn_weight, grad_bn_bias


class FoldedSTSTNet(nn.Module):
    """F STSTNets (one per fold) as stacked parameters `[F, ...]`, trained at once, each on its own batch.

    Inputs are `[F, B, C, S, S]` (sample b of fold f's batch; fold-major, so that a fold's samples are
    contiguous) with a mask `[B, F]` of the real samples, which come first in each fold's column (the
    folds' batches differ in size; the rest is padding that no statistic, loss or gradient sees), and
    in training the dropout keep-mask `[B, F, 16, P, P]` (already scaled by 1 / (1 - p)) drawn by the
    caller from each fold's own generator. Logits are `[B, F, K]`.
    """

    def __init__(self, *, models: list[STSTNet]):
        super().__init__()
        # [F, 16, C, 3, 3]: one 16-channel convolution computes the three streams of a fold
        self.conv_weight = nn.Parameter(torch.stack([_streams(m, "conv", "weight") for m in models]))
        self.conv_bias = nn.Parameter(torch.stack([_streams(m, "conv", "bias") for m in models]))  # [F, 16]
        self.bn_weight = nn.Parameter(torch.stack([_streams(m, "bn", "weight") for m in models]))  # [F, 16]
        self.bn_bias = nn.Parameter(torch.stack([_streams(m, "bn", "bias") for m in models]))  # [F, 16]
        self.fc_weight = nn.Parameter(torch.stack([m.fc.weight.detach() for m in models]))  # [F, K, 16 * side^2]
        self.fc_bias = nn.Parameter(torch.stack([m.fc.bias.detach() for m in models]))  # [F, K]
        self.register_buffer("running_mean", torch.stack([_streams(m, "bn", "running_mean") for m in models]))
        self.register_buffer("running_var", torch.stack([_streams(m, "bn", "running_var") for m in models]))
        self.register_buffer("batches_tracked", torch.stack([m.bn1.num_batches_tracked for m in models]))  # [F]

    def forward(self, x: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        batch, folds = mask.shape
        counts = mask.sum(0).tolist()
        params = (self.conv_weight, self.conv_bias, self.bn_weight, self.bn_bias, self.running_mean, self.running_var)
        width = STREAMS * feature_side(x.shape[-1]) ** 2
        features = []
        for f, (count, *fold_params) in enumerate(zip(counts, *params, strict=True)):
            if count == 0:  # no batch for this fold this step: nothing runs, nothing is updated
                features.append(x.new_zeros(batch, width))
                continue
            maps = self._fold_maps(x[f, :count], *fold_params)  # [count, 16, P, P]
            if keep is not None:
                maps = maps * keep[:count, f]
            pooled = F.avg_pool2d(maps, AVG_POOL).flatten(1)  # [count, 16 * side^2]
            features.append(F.pad(pooled, (0, 0, 0, batch - count)))
        if self.training:
            self.batches_tracked += (mask.sum(0) > 0).to(self.batches_tracked.device)
        features = torch.stack(features, dim=1)  # [B, F, 16 * side^2]
        return torch.einsum("bfd,fkd->bfk", features, self.fc_weight) + self.fc_bias  # [B, F, K]

    def _fold_maps(self, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        """One fold's three streams on its own real samples `[b, C, S, S]`, up to the max-pool: `[b, 16, P, P]`.

        Each fold's full-resolution maps are computed on that fold's samples alone (batch norm's statistics
        and running-statistics update its own): in training by `ConvReluNormPool`, in evaluation by PyTorch's
        kernels; only the small pooled maps are stacked. On CPU these maps are memory-bound and already large
        (a batch of 256), so one call per fold costs nothing, while a grouped convolution's backward is
        several times slower.
        """
        conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var = params
        if self.training:
            pooled, mean, var = ConvReluNormPool.apply(x, conv_weight, conv_bias, bn_weight, bn_bias)
            with torch.no_grad():  # nn.BatchNorm2d's update of the running statistics
                running_mean.lerp_(mean, BN_MOMENTUM)
                running_var.lerp_(var, BN_MOMENTUM)
            return pooled
        z = torch.relu(F.conv2d(x, conv_weight, conv_bias, padding=CONV_PADDING))  # [b, 16, S + 2, S + 2]
        z = F.batch_norm(z, running_mean, running_var, bn_weight, bn_bias, training=False, eps=BN_EPS)
        return F.max_pool2d(z, POOL, stride=POOL, padding=POOL_PADDING)

    def fold_state(self, fold: int) -> dict[str, torch.Tensor]:
        """Fold `fold`'s weights as an `STSTNet` state dict (the public code's keys and shapes)."""
        state = {}
        start = 0
        for i, width in enumerate(STREAM_CHANNELS, start=1):
            part = slice(start, start + width)
            state[f"conv{i}.weight"] = self.conv_weight[fold, part]
            state[f"conv{i}.bias"] = self.conv_bias[fold, part]
            state[f"bn{i}.weight"] = self.bn_weight[fold, part]
            state[f"bn{i}.bias"] = self.bn_bias[fold, part]
            state[f"bn{i}.running_mean"] = self.running_mean[fold, part]
            state[f"bn{i}.running_var"] = self.running_var[fold, part]
            state[f"bn{i}.num_batches_tracked"] = self.batches_tracked[fold]
            start += width
        state["fc.weight"] = self.fc_weight[fold]
        state["fc.bias"] = self.fc_bias[fold]
        return {name: value.detach().clone() for name, value in state.items()}


Builder = Callable[..., nn.Module]  # (*, num_classes, in_channels, size, dropout) -> module [B, C, S, S] -> [B, K]


def build_ststnet(*, num_classes: int, in_channels: int, size: int, dropout: float) -> STSTNet:
    return STSTNet(num_classes=num_classes, dropout=dropout, in_channels=in_channels, size=size)


# name -> builder; a user's module plugs in with `MODELS["mine"] = builder` (trained one fold at a time)
MODELS: dict[str, Builder] = {"ststnet": build_ststnet}
# name -> its many-folds-at-once form (built from the folds' freshly initialised modules)
FOLDED: dict[str, Callable[..., nn.Module]] = {"ststnet": FoldedSTSTNet}
