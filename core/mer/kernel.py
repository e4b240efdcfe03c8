"""The compiled CPU kernel of STSTNet's full-resolution training stage (`stage.cpp` beside this file).

`ConvReluNormPool` (core/mer/models.py) runs its heavy part here when it can: the 16-channel convolution,
ReLU, batch-norm sums and max-pool of each sample in one pass, and the backward in two, without the
`[b, 16, S + 2, S + 2]` maps ever taking more than one pass (about 3x PyTorch's kernels on a CPU). The source is
compiled once per process, for this machine (`c++ -O3 -march=native`, or `$CXX`), into a temporary
folder removed at once (the loaded library stays mapped). Without a compiler, or where it fails, the
stage runs on PyTorch's kernels with the same results to float rounding, and one line on stderr says so.
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

import torch

SOURCE = Path(__file__).with_name("stage.cpp")
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC")  # for the CPU it runs on: compiled where it runs
CHANNELS = (1, 2, 3, 4)  # input channel counts the source instantiates
STREAMS = 16  # the source's vector width: the three streams' channels together
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
    loaded.stage_backward.argtypes = [_POINTER, _POINTER, _INT, _INT, _INT] + [_POINTER] * 8 + [_INT] + [_POINTER] * 3
    loaded.stage_forward.restype = loaded.stage_backward.restype = _INT
    return loaded


def usable(x: torch.Tensor) -> bool:
    """Whether the kernel takes these inputs `[N, C, S, S]` (float32 on a CPU, C in CHANNELS) and is built."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[1] in CHANNELS and bool(stage_library())


def _address(tensor: torch.Tensor) -> ctypes.c_void_p:
    if not tensor.is_contiguous():
        raise ValueError(f"the kernel needs contiguous tensors, got strides {tensor.stride()}")
    return ctypes.c_void_p(tensor.data_ptr())


def tap_major(conv_weight: torch.Tensor) -> torch.Tensor:
    """`[16, C, 3, 3]` -> `[C * 9, 16]`: the kernel's layout, one vector of the 16 channels per tap."""
    return conv_weight.detach().permute(1, 2, 3, 0).reshape(-1, STREAMS).contiguous()


def forward(
    padded: torch.Tensor,
    rows: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor,
    sign: torch.Tensor,
    *,
    pooled_side: int,
) -> tuple[torch.Tensor, ...]:
    """The batch `padded[rows]` (`padded` `[N, C, S + 4, S + 4]`: the inputs zero-padded by 2; `rows` `[b]`
    long), `weights` from `tap_major`, `bias` and `sign` (+1 or -1 per channel) `[16]` -> (`[2, 16]` float64:
    the ReLU output's sum and sum of squares, `[b, P, P, 16]`: per window the largest sign * h,
    `[b, P, P, 16]` int32: where it is, i * (S + 2) + j, and the ReLU output h `[b, S + 2, S + 2, 16]`, kept
    for `backward`)."""
    _, channels, side, _ = padded.shape
    sums = torch.zeros(2, STREAMS, dtype=torch.float64)
    pooled = torch.empty(len(rows), pooled_side, pooled_side, STREAMS)
    index = torch.empty(len(rows), pooled_side, pooled_side, STREAMS, dtype=torch.int32)
    relu = torch.empty(len(rows), side - 2, side - 2, STREAMS)
    vectors = (weights, bias.detach().contiguous(), sign.contiguous())
    status = stage_library().stage_forward(
        _address(padded), _address(rows), len(rows), channels, side, *map(_address, vectors), pooled_side,
        _address(sums[0]), _address(sums[1]), _address(pooled), _address(index), _address(relu),
    )  # fmt: skip
    if status:
        raise RuntimeError(f"stage_forward has no instance for {channels} channels")
    return sums, pooled, index, relu


def backward(
    padded: torch.Tensor,
    rows: torch.Tensor,
    relu: torch.Tensor,
    c0: torch.Tensor,
    c1: torch.Tensor,
    grad: torch.Tensor,
    scale: torch.Tensor,
    sign: torch.Tensor,
    pooled: torch.Tensor,
    index: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The convolution's weight `[C * 9, 16]` and bias `[16]` gradients (float64) for the gradient
    `[h > 0] (c1 h + c0)` everywhere plus `scale * grad` (`grad` `[b, 16, P, P]`) at each window's chosen
    element where h > 0 there (`relu`, `pooled`, `index` from `forward`, with its `sign`)."""
    _, channels, side, _ = padded.shape
    grad_weights = torch.zeros(channels * 9, STREAMS, dtype=torch.float64)
    grad_bias = torch.zeros(STREAMS, dtype=torch.float64)
    work = torch.empty((side - 2) ** 2, STREAMS)
    vectors = (relu, c0.contiguous(), c1.contiguous(), grad.contiguous(), scale.contiguous(), sign.contiguous())
    vectors += (pooled, index)
    status = stage_library().stage_backward(
        _address(padded), _address(rows), len(rows), channels, side, *map(_address, vectors), index.shape[1],
        _address(grad_weights), _address(grad_bias), _address(work),
    )  # fmt: skip
    if status:
        raise RuntimeError(f"stage_backward has no instance for {channels} channels")
    return grad_weights, grad_bias
