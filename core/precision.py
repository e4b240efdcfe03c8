"""Which autocast dtype mixed precision uses, and whether it should run at all.

The paper trains with float16 autocast and a GradScaler on CUDA. On a CPU, autocast runs
in bfloat16, which pays only where the CPU computes bfloat16 natively (AVX512-BF16 or
AMX); on AVX2-only CPUs it is 3-10x *slower* than float32. `resolve_amp_dtype` makes
that decision once per run and says in one line whenever it departs from what was asked.

The forward's autocast region (`autocast`, `volume_dtype`) and the one question that makes the
network compute differently under autograd (`under_autograd`) live here too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# CPU flags (as /proc/cpuinfo spells them) of native bfloat16 arithmetic.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def amp_dtype_name(dtype: torch.dtype | None) -> str:
    """`torch.float16` -> "float16"; None (no autocast) -> "float32"."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def parse_amp_dtype(name: str | None) -> torch.dtype | None:
    """ "float16"/"bfloat16" (the `--amp_dtype` values) as a torch dtype; None stays None."""
    if name is None:
        return None
    if name not in AMP_DTYPES:
        raise ValueError(f"amp dtype must be one of {', '.join(AMP_DTYPES)}, got {name!r}")
    return AMP_DTYPES[name]


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the OS reports (empty where there is no /proc/cpuinfo)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16(capability: str | None = None, flags: frozenset[str] | None = None) -> bool:
    """True when this CPU does bfloat16 arithmetic natively (AVX512-BF16 or AMX).

    `capability` is `torch.backends.cpu.get_cpu_capability()` (e.g. "AVX2", "AVX512");
    AVX512 alone is not enough (it only emulates bfloat16), so the CPU flags decide.
    Both can be given, for tests.
    """
    capability = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    if not capability.upper().startswith("AVX512"):
        return False  # AVX2 / DEFAULT: no native bfloat16 kernels in PyTorch
    flags = cpu_flags() if flags is None else flags
    return bool(NATIVE_BF16_FLAGS & flags)


def resolve_amp_dtype(
    mixed_precision: bool,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    *,
    warn: Callable[[str], None] = print,
    native_bf16: bool | None = None,
) -> torch.dtype | None:
    """The autocast dtype a run uses, or None for float32.

    - not `mixed_precision`: None;
    - CUDA: `amp_dtype` or float16; bfloat16 on a GPU without bfloat16 support falls back
      to float16;
    - CPU: an explicit `amp_dtype` is honoured (float16 is emulated, to check the CUDA recipe);
      by default bfloat16 where the CPU has it natively, else float32.
    Every fallback is reported through `warn`, in one line. `native_bf16` overrides the
    CPU check (for tests).
    """
    if not mixed_precision:
        return None
    if device.type == "cuda":
        if amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            warn(
                f"warning: {torch.cuda.get_device_name(device)} has no bfloat16 support: mixed precision runs "
                "in float16 (with a GradScaler in training)"
            )
            return torch.float16
        return amp_dtype or torch.float16
    if amp_dtype is not None:
        return amp_dtype
    if native_bf16 is None:
        native_bf16 = device.type != "cpu" or cpu_has_native_bf16()
    if not native_bf16:
        warn(
            f"warning: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bfloat16 "
            "(AVX512-BF16 or AMX), where bfloat16 autocast is slower than float32: --mixed_precision runs "
            "in float32 (force it with --amp_dtype bfloat16)"
        )
        return None
    return torch.bfloat16


def needs_grad_scaler(amp_dtype: torch.dtype | None) -> bool:
    """float16 gradients need loss scaling; bfloat16 has float32's range and needs none."""
    return amp_dtype == torch.float16


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """How a run computes, for logs and result files: "float32" or "float16 autocast"."""
    return "float32" if amp_dtype is None else f"{amp_dtype_name(amp_dtype)} autocast"


def under_autograd() -> bool:
    """Whether autograd records the computation now (training), the one grad-mode question of the network.

    The answer changes how the network computes, never what (the flows agree to rounding): under
    autograd every use of a low-precision weight or matrix is cast afresh, so that the gradients
    of all iterations add up in float32, as in the reference's autocast region per iteration; at
    inference one cast copy serves every iteration. Where it is asked:
    - `autocast` (the autocast weight cache, inference only);
    - `GMAUpdateBlock.prepare` in core/update.py and `Attention.forward` in core/gma.py, through
      `inference_cast_dtype` (recurrent weights and attention matrix cast once, inference only);
    - `AttentionLogits.blocks` in core/gma.py (float32 softmax under autograd, as CUDA's autocast);
    - `InstanceNorm2d` in core/encoders.py (the faster kernel: group norm at inference on CPU).
    """
    return torch.is_grad_enabled()


def inference_cast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype a tensor may be cast to once and reused for every iteration: at
    inference inside an autocast region on `device_type`; None under autograd or without autocast."""
    if under_autograd() or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """The autocast region of the forward: `amp_dtype` on `device` (None: off)."""
    # Under autograd every use of a weight is cast afresh, as in the reference's autocast region
    # per iteration: one cached float16 copy shared by all iterations would sum their gradients
    # in float16 (and overflow) before they reach the float32 weight. Without autograd the cache
    # only saves work.
    return torch.autocast(
        device_type=device.type,
        dtype=amp_dtype or torch.float32,
        enabled=amp_dtype is not None,
        cache_enabled=not under_autograd(),
    )


def volume_dtype(device: torch.device, amp_dtype: torch.dtype | None) -> torch.dtype:
    """dtype of the stored correlation volume and the on-the-fly products: `amp_dtype` on
    CUDA (tensor cores, half the memory), else float32. Lookups interpolate in float32 either way."""
    return amp_dtype if amp_dtype is not None and device.type == "cuda" else torch.float32
