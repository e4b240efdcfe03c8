"""Shared helpers for the model tests: the spec's key lists and deterministic weights."""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
SPEC_TSV = DATA / "decflow_state_dict.tsv"
GMA_TSV = DATA / "gma_state_dict.tsv"
# The project's shared specification folder sits next to the repository in development
# and CI; users of the project do not have it.
SHARED_SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec"


def require_shared(path: Path, environ: Mapping[str, str] = os.environ) -> Path:
    """`path` (a file of the shared specification folder) when it exists. Missing, it skips the
    test, except under `CI=true` (as CI services set it), where the test fails: CI must run the
    parity checks, a silent skip there would hide a missing fixture."""
    if path.is_file():
        return path
    message = f"shared parity fixture {path} not available"
    if environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"CI=true: {message} (CI must run the parity tests: put the shared folder beside the clone)")
    pytest.skip(message)


# bfloat16 keeps 8 significant bits: rounding moves a value by up to 2^-8 of itself. The floor
# of the bf16 tolerances, for CPUs whose native bf16 kernels round otherwise than the AVX2
# emulation the deviations were measured with.
BF16_RELATIVE_STEP = 2**-8


def assert_flows_close(actual: object, expected: object, names: Sequence[str], *, atol: float) -> None:
    """`actual.<name>` within `atol` (absolute, px) of `expected.<name>` for each of `names`; a failure
    names the field, the worst element and by how much (`torch.testing.assert_close`)."""
    torch.testing.assert_close(
        {name: getattr(actual, name) for name in names},
        {name: getattr(expected, name) for name in names},
        rtol=0,
        atol=atol,
    )


def bf16_tolerance(measured: float) -> float:
    """A relative bf16 tolerance: 3x the deviation `measured` (relative, on an AVX2 CPU with
    bf16 emulated), at least one bf16 rounding step."""
    return max(3 * measured, BF16_RELATIVE_STEP)


def read_spec(path: Path = SPEC_TSV) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in path.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype))
    return rows


def deterministic_tensor(key: str, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    """Small, key-dependent values (same on every machine): weights of a plausible network."""
    if dtype.startswith("int"):
        if key.endswith("rel_ind"):
            index = torch.arange(shape[0])
            return index[None, :] - index[:, None] + shape[0] - 1
        return torch.zeros(shape, dtype=torch.int64)
    # `downsample.1` is the same module as `norm3` (two names, one tensor in real files).
    generator = torch.Generator().manual_seed(zlib.crc32(key.replace("downsample.1.", "norm3.").encode()))
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return 1.0 + 0.1 * torch.rand(shape, generator=generator)
    if leaf == "gamma":
        return torch.full(shape, 0.3)
    fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
    values = torch.randn(shape, generator=generator)
    if len(shape) == 1:
        return (1.0 if leaf == "weight" else 0.0) + 0.05 * values
    return values / fan_in**0.5


def authors_state_dict(*, prefix: str = "module.", tsv: Path = SPEC_TSV) -> dict[str, torch.Tensor]:
    """A state dict in the authors' key format, built from the spec's key list."""
    return {prefix + key: deterministic_tensor(key, shape, dtype) for key, shape, dtype in read_spec(tsv)}
