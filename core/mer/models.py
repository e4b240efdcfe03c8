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
In training on a CPU with a C++ compiler, a fold's whole step is `FusedFoldStep`, one autograd function
whose forward and backward run in the compiled kernel (`core.mer.kernel`); elsewhere its stage is
`ConvReluNormPool`, one autograd function with a hand-written backward on PyTorch's kernels (about twice as
fast as the same stage through PyTorch's modules). All give the same numbers to float rounding.

`MODELS` maps a name to a builder `(num_classes, in_channels, size) -> nn.Module`; a user's module
plugs in by adding an entry (the protocol trains any entry, one fold at a time).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.mer import kernel

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
DROPOUT_LEVELS = 2**16  # dropout draws uniform integers in [0, DROPOUT_LEVELS) (see dropout_keep)


def pool_side(size: int) -> int:
    """Side of the max-pooled maps (where dropout acts) for a `size` x `size` input (10 for 28)."""
    conv = size + 2 * CONV_PADDING - KERNEL + 1
    return (conv + 2 * POOL_PADDING - POOL) // POOL + 1


def dropout_threshold(p: float) -> int:
    """A value is kept by dropout with probability `p` where its draw (uniform in [0, DROPOUT_LEVELS)) is below this."""
    return round((1 - p) * DROPOUT_LEVELS)


def dropout_scale(p: float) -> float:
    """What dropout with probability `p` multiplies the kept values by."""
    return 1 / (1 - p)


def dropout_keep(draws: torch.Tensor, p: float) -> torch.Tensor:
    """The float keep-mask of these draws (any shape, int32): 1 / (1 - p) where a draw is below
    `dropout_threshold(p)`, else 0. Uniform integers in [0, 2^16) are exact for p = 0.5 (STSTNet's) and
    three times as fast to draw on a CPU as `bernoulli_`."""
    return torch.where(draws < dropout_threshold(p), dropout_scale(p), 0.0)


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


def _batch_moments(var: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For a batch's biased variance `[16]` over `count` values: (1 / std as batch norm normalises with it, the
    unbiased variance that nn.BatchNorm2d keeps in its running statistics)."""
    return (var + BN_EPS).rsqrt(), var * (count / (count - 1))


def _normalisation_backward(
    grad_weight: torch.Tensor, grad_bias: torch.Tensor, bn_weight: torch.Tensor, moments: tuple, count: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch norm's backward in training, written out per channel `[16]`: for the gradients of its weight and bias
    (the sums of its output's gradient g * normalised, and of g) and the batch's `moments` (mean, 1 / std) over
    `count` values, (c0, c1, scale): the gradient of its input h is `c0 + c1 * h + scale * g`."""
    mean, inv_std = moments
    mean_grad = grad_bias * bn_weight / count  # the gradient through the batch's mean ...
    mean_grad_x = grad_weight * bn_weight / count  # ... and through its variance
    c1 = -mean_grad_x * inv_std * inv_std
    c0 = inv_std * (mean_grad_x * mean * inv_std - mean_grad)
    return c0, c1, bn_weight * inv_std


def _pool_sign(bn_weight: torch.Tensor) -> torch.Tensor:
    """`[16]`: +1 where batch norm increases (its max-pool is a max-pool of its input), -1 where it decreases
    (a min-pool)."""
    return torch.where(bn_weight < 0, -1.0, 1.0).to(bn_weight.dtype)


class ConvReluNormPool(torch.autograd.Function):
    """One fold's full-resolution stage in training on PyTorch's kernels (where `FusedFoldStep` does not run: a
    GPU, no compiler, `compiled=False`, inputs the kernel does not take), on the batch `padded[rows]` (`padded`
    `[N, C, S + 4, S + 4]`: all inputs zero-padded by CONV_PADDING; `rows` `[b]` long) -> `[b, 16, P, P]`: the
    three streams' convolution, ReLU, batch norm with the batch's statistics, and the 3x3 max-pool; also returns
    the batch's mean and unbiased variance `[16]` for the caller's running statistics.

    What makes it cheaper than PyTorch's modules (memory passes over the `[b, 16, S + 2, S + 2]` maps,
    which are all the time on a CPU):
    - batch norm is a per-channel affine map, increasing where its weight is >= 0 and decreasing where it
      is < 0, so it commutes with the max-pool (a min-pool for the decreasing channels): the pool runs on
      the ReLU's output and only the pooled maps are normalised;
    - the backward is written out: through the pool, the gradient reaches the batch-norm input only at
      each window's chosen element, and through the batch's mean and variance every element as
      `c0 + c1 * h` (per-channel constants), both zero where the ReLU was off.

    Where a batch-norm weight is exactly 0 (never in training from PyTorch's initial 1), every element of a
    window is equal after the normalisation; its gradient is then the right-hand derivative (the window's
    largest element), where PyTorch's max-pool would take the window's first element.
    """

    @staticmethod
    def forward(ctx, padded, rows, conv_weight, conv_bias, bn_weight, bn_bias):  # noqa: ANN001, ANN205
        sign = _pool_sign(bn_weight)
        batch = padded[rows]  # [b, C, S + 4, S + 4]
        h, mean, var, chosen, index = _eager_maps(batch, conv_weight, conv_bias, sign)
        ctx.count = h.numel() // h.shape[1]
        inv_std, unbiased = _batch_moments(var, ctx.count)
        # chosen is h at each window's chosen element; normalised = (chosen - mean) * inv_std
        normalised = torch.addcmul((-mean * inv_std).view(1, -1, 1, 1), chosen, inv_std.view(1, -1, 1, 1))
        ctx.save_for_backward(batch, conv_weight, h, index, chosen, normalised, mean, inv_std, bn_weight)
        ctx.mark_non_differentiable(mean, unbiased)
        out = torch.addcmul(bn_bias.view(1, -1, 1, 1), normalised, bn_weight.view(1, -1, 1, 1))
        return out, mean, unbiased

    @staticmethod
    def backward(ctx, grad, _grad_mean, _grad_var):  # noqa: ANN001, ANN205
        batch, conv_weight, h, index, chosen, normalised, mean, inv_std, bn_weight = ctx.saved_tensors
        dims = (0, 2, 3)
        grad_bn_bias, grad_bn_weight = grad.sum(dims), (grad * normalised).sum(dims)
        c0, c1, scale = _normalisation_backward(grad_bn_weight, grad_bn_bias, bn_weight, (mean, inv_std), ctx.count)
        at_chosen = (grad * scale.view(1, -1, 1, 1)).masked_fill_(chosen <= 0, 0)  # the ReLU's gate
        grad_conv_weight, grad_conv_bias = _eager_conv_grads(batch, conv_weight, h, index, c0, c1, at_chosen)
        return None, None, grad_conv_weight, grad_conv_bias, grad_bn_weight, grad_bn_bias


class FusedFoldStep(torch.autograd.Function):
    """One fold's whole training forward in the compiled kernel (`core.mer.kernel`, a CPU), on the batch
    `padded[rows]` (as `ConvReluNormPool`'s) -> logits `[b, K]`, and the batch's mean and unbiased variance
    `[16]`: `ConvReluNormPool`'s stage, then its batch norm of the pooled maps, dropout with probability `p` by
    the `draws` `[b, P, P, 16]` (`dropout_keep`; None: no dropout) and the linear layer `fc_weight`
    `[K, P * P * 16]` (the maps' channels-last order), `fc_bias` `[K]`. The same numbers as that composition to
    float rounding, and faster: the small maps take one pass each way instead of a dozen of PyTorch's kernels.

    Its large tensors go to `buffers` (`kernel.Buffers`, for this batch), which the caller reuses from step to
    step (`FoldedSTSTNet.step_buffers`).
    """

    @staticmethod
    def forward(ctx, padded, rows, conv_weight, conv_bias, bn_weight, bn_bias, fc_weight, fc_bias, draws, p, buffers):  # noqa: ANN001, ANN205
        sign = _pool_sign(bn_weight)
        sums = kernel.forward(padded, rows, kernel.tap_major(conv_weight), conv_bias, sign, buffers)
        ctx.count = len(rows) * (padded.shape[-1] - KERNEL + 1) ** 2
        mean64 = sums[0] / ctx.count
        mean, var = mean64.float(), (sums[1] / ctx.count - mean64 * mean64).clamp(min=0).float()
        inv_std, unbiased = _batch_moments(var, ctx.count)
        dropout = (dropout_threshold(p), dropout_scale(p))
        affine = (bn_weight.detach().contiguous(), bn_bias.detach().contiguous())
        head = kernel.Head(
            buffers.pooled, sign, mean, inv_std, *affine, draws, fc_weight.detach().contiguous(), *dropout
        )
        ctx.save_for_backward(padded, rows, buffers.relu, buffers.index, buffers.grad, *head.tensors())
        ctx.dropout = dropout
        ctx.mark_non_differentiable(mean, unbiased)
        return kernel.head_forward(head, fc_bias), mean, unbiased

    @staticmethod
    def backward(ctx, grad_logits, _grad_mean, _grad_var):  # noqa: ANN001, ANN205
        padded, rows, relu, index, grad, *saved = ctx.saved_tensors
        head = kernel.Head(*saved, *ctx.dropout)
        grad_fc, grad_fc_bias, grad_bn_weight, grad_bn_bias = kernel.head_backward(head, grad_logits, grad)
        grad_bn = (grad_bn_weight.float(), grad_bn_bias.float())
        c0, c1, scale = _normalisation_backward(*grad_bn, head.weight, (head.mean, head.inv_std), ctx.count)
        grads = kernel.backward(padded, rows, relu, c0, c1, grad, scale, index)
        grad_conv_weight = grads[0].view(padded.shape[1], KERNEL, KERNEL, -1).permute(3, 0, 1, 2)  # [16, C, 3, 3]
        grad_conv = (grad_conv_weight.float().contiguous(), grads[1].float())
        return None, None, *grad_conv, *grad_bn, grad_fc.float(), grad_fc_bias.float(), None, None, None


def _eager_maps(
    padded: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor, sign: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """ConvReluNormPool's forward maps of the padded batch in PyTorch's kernels: (h `[b, 16, S + 2, S + 2]`
    channels-last, the batch's mean and biased variance `[16]`, h at each window's chosen element
    `[b, 16, P, P]`, its index)."""
    x = padded.contiguous(memory_format=torch.channels_last)
    h = F.conv2d(x, conv_weight, conv_bias).clamp_(min=0)  # [b, 16, S + 2, S + 2]
    flat = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])  # [M, 16]: the same memory, channels-last
    mean = h.new_ones(flat.shape[0]) @ flat / flat.shape[0]  # a matrix-vector product: the fastest sum on a CPU
    var = (torch.linalg.vecdot(flat, flat, dim=0) / flat.shape[0] - mean * mean).clamp_(min=0)
    flipped = bool((sign < 0).any())
    sign = sign.view(1, -1, 1, 1)
    pooled, index = F.max_pool2d_with_indices(h * sign if flipped else h, POOL, stride=POOL, padding=POOL_PADDING)
    return h, mean, var, pooled * sign if flipped else pooled, index


def _eager_conv_grads(
    padded: torch.Tensor,
    conv_weight: torch.Tensor,
    h: torch.Tensor,
    index: torch.Tensor,
    c0: torch.Tensor,
    c1: torch.Tensor,
    at_chosen: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ConvReluNormPool's convolution gradients in PyTorch's kernels: the gradient `[h > 0] (c0 + c1 h)`
    everywhere plus `at_chosen` at the chosen elements, through the convolution."""
    at_chosen = at_chosen.contiguous(memory_format=torch.channels_last)  # as the maps it goes back to
    grad_h = torch.ops.aten.max_pool2d_with_indices_backward(
        at_chosen, h, [POOL, POOL], [POOL, POOL], [POOL_PADDING] * 2, [1, 1], False, index
    )  # [b, 16, S + 2, S + 2], zero but at the chosen elements
    grad_z = grad_h.addcmul_(h, c1.view(1, -1, 1, 1)).addcmul_(torch.sign(h), c0.view(1, -1, 1, 1))  # sign: ReLU on
    x = padded.contiguous(memory_format=torch.channels_last)
    _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad_z, x, conv_weight, [conv_weight.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, True]
    )
    return grad_weight, grad_bias


def pooled_fc_weight(fc_weight: torch.Tensor, *, side: int) -> torch.Tensor:
    """`[F, K, 16 * s * s]` -> `[F, K, 16, side, side]`: the linear layer over the 2x2 average pool of the
    `side` x `side` max-pooled maps, as one linear map of those maps (each weight spread over its window,
    divided by 4; a last row and column that the pool drops get 0), so that no pool runs in training."""
    folds, classes, _ = fc_weight.shape
    half = side // AVG_POOL
    spread = fc_weight.view(folds, classes, STREAMS, half, 1, half, 1) / AVG_POOL**2
    spread = spread.expand(-1, -1, -1, -1, AVG_POOL, -1, AVG_POOL).reshape(folds, classes, STREAMS, 2 * half, 2 * half)
    return F.pad(spread, (0, side - 2 * half, 0, side - 2 * half))


class FoldedSTSTNet(nn.Module):
    """F STSTNets (one per fold) as stacked parameters `[F, ...]`, trained at once, each on its own batch.

    Inputs are all the clips `[N, C, S, S]` and `indices` `[B, F]` (long: sample b of fold f's batch is
    `inputs[indices[b, f]]`, so that no batch is copied out), with a mask `[B, F]` of the real samples,
    which come first in each fold's column (the folds' batches differ in size; the rest is padding that no
    statistic, loss or gradient sees), and in training per fold its dropout draws `[count, P, P, 16]` (int32,
    channels-last, uniform in [0, DROPOUT_LEVELS): `dropout_keep`) drawn by the caller from the fold's own
    generator. Logits are `[B, F, K]`.
    """

    def __init__(self, *, models: list[STSTNet], compiled: bool = True):
        super().__init__()
        self.compiled = compiled  # training steps in core.mer.kernel where it builds (speed only)
        rates = {m.dropout.p for m in models}
        if len(rates) != 1:
            raise ValueError(f"the folds' models need one dropout probability, got {sorted(rates)}")
        self.dropout = rates.pop()
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
        self.scratch: dict[int, kernel.Buffers] = {}  # fold -> its compiled training steps' buffers (step_buffers)

    def forward(
        self,
        inputs: torch.Tensor,
        indices: torch.Tensor,
        mask: torch.Tensor,
        draws: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        batch, folds = mask.shape
        counts = mask.sum(0).tolist()
        params = (self.conv_weight, self.conv_bias, self.bn_weight, self.bn_bias, self.running_mean, self.running_var)
        side = pool_side(inputs.shape[-1])
        if self.training:  # padded once for all folds
            inputs = F.pad(inputs, (CONV_PADDING,) * 4).contiguous()  # [N, C, S + 4, S + 4]
        # [F, K, P * P * 16]: in the maps' channels-last order, so that flattening them copies nothing
        fc_weight = pooled_fc_weight(self.fc_weight, side=side).permute(0, 1, 3, 4, 2).flatten(2)
        logits = []
        for f, (count, *fold_params) in enumerate(zip(counts, *params, strict=True)):
            if count == 0:  # no batch for this fold this step: nothing runs, nothing is updated
                logits.append(inputs.new_zeros(batch, fc_weight.shape[1]))
                continue
            head = (None if draws is None else draws[f], fc_weight[f], self.fc_bias[f])
            fold_logits = self._fold_logits(
                f, inputs, indices[:count, f].contiguous(), *fold_params, *head
            )  # [count, K]
            logits.append(F.pad(fold_logits, (0, 0, 0, batch - count)))
        if self.training:
            self.batches_tracked += (mask.sum(0) > 0).to(self.batches_tracked.device)
        return torch.stack(logits, dim=1)  # [B, F, K]

    def _fold_logits(
        self, fold: int, inputs: torch.Tensor, rows: torch.Tensor, *params: torch.Tensor | None
    ) -> torch.Tensor:
        """Fold `fold`'s logits `[b, K]` on its own real samples `inputs[rows]` (in training `inputs` is padded by
        CONV_PADDING), with its dropout draws `[b, P, P, 16]` or None, and its linear layer over the
        max-pooled maps (`pooled_fc_weight`, channels-last order).

        Each fold's full-resolution maps are computed on that fold's samples alone (batch norm's statistics
        and running-statistics update its own): in training by `FusedFoldStep` where the compiled kernel runs
        and by `ConvReluNormPool` otherwise, in evaluation by PyTorch's kernels.
        """
        conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, draws, fc_weight, fc_bias = params
        if not self.training:
            z = torch.relu(
                F.conv2d(inputs[rows], conv_weight, conv_bias, padding=CONV_PADDING)
            )  # [b, 16, S + 2, S + 2]
            z = F.batch_norm(z, running_mean, running_var, bn_weight, bn_bias, training=False, eps=BN_EPS)
            maps = F.max_pool2d(z, POOL, stride=POOL, padding=POOL_PADDING)  # [b, 16, P, P]
            return torch.addmm(fc_bias, maps.permute(0, 2, 3, 1).flatten(1), fc_weight.T)
        stage = (inputs, rows, conv_weight, conv_bias, bn_weight, bn_bias)
        if self.compiled and kernel.usable(inputs):
            buffers = self.step_buffers(fold, len(rows), side=inputs.shape[-1] - 2 * CONV_PADDING)
            logits, mean, var = FusedFoldStep.apply(*stage, fc_weight, fc_bias, draws, self.dropout, buffers)
        else:
            maps, mean, var = ConvReluNormPool.apply(*stage)  # [b, 16, P, P], channels-last
            features = maps.permute(0, 2, 3, 1)  # [b, P, P, 16]
            features = (features if draws is None else features * dropout_keep(draws, self.dropout)).flatten(1)
            logits = torch.addmm(fc_bias, features, fc_weight.T)
        with torch.no_grad():  # nn.BatchNorm2d's update of the running statistics
            running_mean.lerp_(mean, BN_MOMENTUM)
            running_var.lerp_(var, BN_MOMENTUM)
        return logits

    def step_buffers(self, fold: int, batch: int, *, side: int) -> kernel.Buffers:
        """Fold `fold`'s `kernel.Buffers` for a compiled training step on `batch` inputs of side `side`, reused
        from step to step (fresh tensors would cost their page faults at every step), versions bumped."""
        buffers = self.scratch.get(fold)
        if buffers is None or len(buffers.relu) < batch or buffers.relu.shape[1] != side + 2:
            buffers = self.scratch[fold] = kernel.Buffers.empty(batch, side=side, pooled_side=pool_side(side))
        return buffers.first(batch)

    def train(self, mode: bool = True) -> FoldedSTSTNet:
        if not mode:
            self.scratch.clear()  # training's memory alone
        return super().train(mode)

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
