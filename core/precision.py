"""Which autocast dtype mixed precision uses, and whether it should run at all.

The paper trains with float16 autocast and a GradScaler on CUDA. On a CPU, autocast runs
in bfloat16, which pays only where the CPU computes bfloat16 natively (AVX512-BF16 or
AMX); on AVX2-only CPUs it is 3-10x *slower* than float32. `resolve_amp_dtype` makes
that decision once per run and says in one line whenever it departs from what was asked.
"""

from __future__ import annotations

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
