"""The compiled CPU kernel of an STSTNet fold's training step (`stage.cpp` beside this file).

`FusedFoldStep` (core/mer/models.py) runs here: the stage (the 16-channel convolution, ReLU, batch-norm sums
and max-pool of each sample in one pass, and the backward in another, without the `[b, 16, S + 2, S + 2]` maps
ever taking more than one pass) and the head (batch norm of the pooled maps, dropout, the linear layer and
their backward, each one pass over the small maps where PyTorch's kernels take a dozen). The source is
compiled once per process, for this machine (`c++ -O3 -march=native`, or `$CXX`), into a temporary
folder removed at once (the loaded library stays mapped). Without a compiler, or where it fails, the
step runs on PyTorch's kernels with the same results to float rounding, and one line on stderr says so.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
from torch.autograd.graph import increment_version

SOURCE = Path(__file__).with_name("stage.cpp")
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC")  # for the CPU it runs on: compiled where it runs
CHANNELS = (1, 2, 3, 4)  # input channel counts the source instantiates
STREAMS = 16  # the source's vector width: the three streams' channels together
TAPS = 9  # a 3x3 convolution's taps per input channel
COMPILE_TIMEOUT_S = 120

_POINTER = ctypes.c_void_p
_INT = ctypes.c_int


def _without_kernel(reason: str) -> None:
    """Say once, on stderr, why the stage runs on PyTorch's kernels."""
    print(f"core.mer: {reason}: STSTNet trains on PyTorch's kernels", file=sys.stderr)


@functools.cache
def stage_library() -> ctypes.CDLL | None:
    """The compiled kernel (compiled at the first call of the process), or None with a note on stderr."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        return _without_kernel("no C++ compiler (c++, $CXX)")
    with tempfile.TemporaryDirectory(prefix="decflow-mer-", ignore_cleanup_errors=True) as folder:
        library = Path(folder) / "stage.so"
        command = [*shlex.split(compiler), *FLAGS, "-o", str(library), str(SOURCE)]  # $CXX may be "ccache g++"
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False)
            if done.returncode != 0:
                return _without_kernel(f"{compiler} failed ({(done.stderr.strip().splitlines() or ['no message'])[0]})")
            loaded = ctypes.CDLL(str(library))  # calls release the GIL: chunks of folds train on threads
        except (OSError, subprocess.SubprocessError) as error:
            return _without_kernel(f"cannot build {SOURCE.name} ({error})")
    loaded.stage_forward.argtypes = [_POINTER, _POINTER, _INT, _INT, _INT] + [_POINTER] * 3 + [_INT] + [_POINTER] * 5
    loaded.stage_backward.argtypes = [_POINTER, _POINTER, _INT, _INT, _INT] + [_POINTER] * 6 + [_INT] + [_POINTER] * 2
    head = [_POINTER, _INT, _INT, _INT] + [_POINTER] * 6 + [_INT, ctypes.c_float, _POINTER]  # Head.arguments
    loaded.head_forward.argtypes = head + [_POINTER] * 3
    loaded.head_backward.argtypes = head + [_POINTER] * 7
    loaded.stage_forward.restype = loaded.stage_backward.restype = _INT
    loaded.head_forward.restype = loaded.head_backward.restype = None
    return loaded


def usable(x: torch.Tensor) -> bool:
    """Whether the kernel takes these inputs `[N, C, S, S]` (float32 on a CPU, C in CHANNELS) and is built."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[1] in CHANNELS and bool(stage_library())


def _address(tensor: torch.Tensor) -> ctypes.c_void_p:
    """The tensor's data pointer (ValueError where the kernel cannot read it: not contiguous)."""
    if not tensor.is_contiguous():
        raise ValueError(f"the kernel needs contiguous tensors, got strides {tensor.stride()}")
    return ctypes.c_void_p(tensor.data_ptr())


def _rows(rows: torch.Tensor) -> ctypes.c_void_p:
    """The batch's row numbers for the kernel, which reads them as int64."""
    if rows.dtype != torch.long:
        raise ValueError(f"the batch's rows must be int64, got {rows.dtype}")
    return _address(rows)


def tap_major(conv_weight: torch.Tensor) -> torch.Tensor:
    """`[16, C, 3, 3]` -> `[C * TAPS, 16]`: the kernel's layout, one vector of the 16 channels per tap."""
    return conv_weight.detach().permute(1, 2, 3, 0).reshape(-1, STREAMS).contiguous()


class Buffers(NamedTuple):
    """A fold step's large tensors, which its caller reuses from step to step (a fresh tensor per step costs its
    page faults): the ReLU maps `relu` `[b, S + 2, S + 2, 16]` and the pooled maps `pooled` `[b, P, P, 16]` with
    their positions `index` (int32), written by `forward`, and the head's gradient `grad` `[b, P, P, 16]`."""

    relu: torch.Tensor
    pooled: torch.Tensor
    index: torch.Tensor
    grad: torch.Tensor

    @staticmethod
    def empty(batch: int, *, side: int, pooled_side: int) -> Buffers:
        """Buffers for batches of up to `batch` inputs of side `side` (the ReLU maps' side `side + 2`)."""
        pooled = (batch, pooled_side, pooled_side, STREAMS)
        relu = torch.empty(batch, side + 2, side + 2, STREAMS)
        return Buffers(relu, torch.empty(pooled), torch.empty(pooled, dtype=torch.int32), torch.empty(pooled))

    def first(self, count: int) -> Buffers:
        """Views of the first `count` samples' buffers, their version bumped: a graph of an earlier step still
        holding them fails in backward ("modified by an inplace operation") instead of reading other maps."""
        for buffer in self:
            increment_version(buffer)
        return Buffers(*(buffer[:count] for buffer in self))


def forward(
    padded: torch.Tensor,
    rows: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor,
    sign: torch.Tensor,
    buffers: Buffers,
) -> torch.Tensor:
    """The batch `padded[rows]` (`padded` `[N, C, S + 4, S + 4]`: the inputs zero-padded by 2; `rows` `[b]`
    long), `weights` from `tap_major`, `bias` and `sign` (+1 or -1 per channel) `[16]` -> `[2, 16]` float64: the
    ReLU output's sum and sum of squares; written into `buffers` (`[b, ...]`): the ReLU output h, per pooling
    window the largest sign * h (`pooled`) and where it is, i * (S + 2) + j (`index`)."""
    _, channels, side, _ = padded.shape
    if buffers.relu.shape != (len(rows), side - 2, side - 2, STREAMS):
        raise ValueError(f"{len(rows)} inputs of side {side - 4} need buffers for them, got {list(buffers.relu.shape)}")
    sums = torch.zeros(2, STREAMS, dtype=torch.float64)
    vectors = (weights, bias.detach().contiguous(), sign.contiguous())
    status = stage_library().stage_forward(
        _address(padded), _rows(rows), len(rows), channels, side, *map(_address, vectors),
        buffers.pooled.shape[1], _address(sums[0]), _address(sums[1]), _address(buffers.pooled),
        _address(buffers.index), _address(buffers.relu),
    )  # fmt: skip
    if status:
        raise RuntimeError(f"stage_forward has no instance for {channels} channels")
    return sums


def backward(
    padded: torch.Tensor,
    rows: torch.Tensor,
    relu: torch.Tensor,
    c0: torch.Tensor,
    c1: torch.Tensor,
    grad: torch.Tensor,
    scale: torch.Tensor,
    index: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The convolution's weight `[C * TAPS, 16]` and bias `[16]` gradients (float64) for the gradient
    `[h > 0] (c1 h + c0)` everywhere plus `[h > 0] scale * grad` (`grad` `[b, P, P, 16]`) at each window's chosen
    element (`relu`, `index` from `forward`)."""
    _, channels, side, _ = padded.shape
    grad_weights = torch.zeros(channels * TAPS, STREAMS, dtype=torch.float64)
    grad_bias = torch.zeros(STREAMS, dtype=torch.float64)
    vectors = (relu, c0.contiguous(), c1.contiguous(), grad.contiguous(), scale.contiguous(), index)
    status = stage_library().stage_backward(
        _address(padded), _rows(rows), len(rows), channels, side, *map(_address, vectors), index.shape[1],
        _address(grad_weights), _address(grad_bias),
    )  # fmt: skip
    if status:
        raise RuntimeError(f"stage_backward has no instance for {channels} channels")
    return grad_weights, grad_bias


class Head(NamedTuple):
    """What the head needs of a fold's batch: `pooled` `[b, P, P, 16]` and `sign` `[16]` from `forward`, the batch's
    `mean` and `inv_std` `[16]`, the batch norm's `weight` and `bias` `[16]`, the dropout draws `draws`
    `[b, P, P, 16]` int32 (None: no dropout) and the linear layer's `fc` `[K, P * P * 16]` (channels-last order),
    all contiguous; a value is kept, times `keep_scale`, where its draw is below `keep_below`."""

    pooled: torch.Tensor
    sign: torch.Tensor
    mean: torch.Tensor
    inv_std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    draws: torch.Tensor | None
    fc: torch.Tensor
    keep_below: int
    keep_scale: float

    def tensors(self) -> tuple[torch.Tensor | None, ...]:
        """The tensors, for `save_for_backward`: `Head(*tensors, keep_below, keep_scale)` is this again."""
        return tuple(self)[: self._fields.index("keep_below")]

    def arguments(self) -> list:
        """The C arguments they give, from `pooled` to `fc` (ValueError for tensors the kernel cannot read)."""
        batch, side, _, _ = self.pooled.shape
        draws = self.draws
        if draws is not None and (draws.dtype != torch.int32 or draws.shape != self.pooled.shape):
            raise ValueError(
                f"dropout draws must be int32 {list(self.pooled.shape)}, got {draws.dtype} {list(draws.shape)}"
            )
        if self.fc.dim() != 2 or self.fc.shape[1] != self.pooled[0].numel():
            raise ValueError(f"the linear layer must be [K, {self.pooled[0].numel()}], got {list(self.fc.shape)}")
        vectors = (self.sign, self.mean, self.inv_std, self.weight, self.bias)
        draws = ctypes.c_void_p(None) if draws is None else _address(draws)
        head = [_address(self.pooled), batch, side * side, self.fc.shape[0]]
        dropout = [draws, self.keep_below, ctypes.c_float(self.keep_scale)]
        return head + [_address(v) for v in vectors] + dropout + [_address(self.fc)]


def head_forward(head: Head, fc_bias: torch.Tensor) -> torch.Tensor:
    """Logits `[b, K]`: `fc . kept * (weight * (pooled * sign - mean) * inv_std + bias) + fc_bias`."""
    logits = torch.empty(head.pooled.shape[0], head.fc.shape[0])
    work = torch.empty(head.pooled.shape[1] ** 2, STREAMS)
    outputs = (fc_bias.detach().contiguous(), logits, work)
    stage_library().head_forward(*head.arguments(), *map(_address, outputs))
    return logits


def head_backward(head: Head, grad_logits: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """For `grad_logits` `[b, K]`: the gradient of the batch norm's output (after its affine map, before dropout)
    written into `grad` `[b, P, P, 16]` (`kept * fc^T grad_logits`) -> float64 gradients of `fc`
    `[K, P * P * 16]`, of the linear bias `[K]`, and of the batch norm's weight and bias `[16]`."""
    grad_fc = torch.zeros(head.fc.shape, dtype=torch.float64)
    grad_fc_bias = torch.zeros(head.fc.shape[0], dtype=torch.float64)
    grad_weight, grad_bias = torch.zeros(2, STREAMS, dtype=torch.float64)
    work = torch.empty(head.fc.shape)
    outputs = (grad_logits.contiguous(), grad, grad_fc, grad_fc_bias, grad_weight, grad_bias, work)
    stage_library().head_backward(*head.arguments(), *map(_address, outputs))
    return grad_fc, grad_fc_bias, grad_weight, grad_bias
