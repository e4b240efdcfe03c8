"""CUDA half of the benchmark (`python -m benchmarks.benchmark all --device cuda`).

Every mode runs in one process, interleaved: the straightforward forward of
core/reference.py (fp32, and with the reference's autocast regions), our eager fast
path (fp32, AMP), the same replayed from CUDA graphs (core.inference.FlowEstimator) and the
memory-bounded mode; and pairs/s of the default path (graphs, AMP) at batch 1, 4 and 8.
Times are CUDA-event milliseconds after warm-up (best of
`repeats`); `gpu_ms` is the kernel time the profiler sees in one run, so `gpu_ms / ms`
shows how much of a call the GPU is busy (the rest is launch overhead); peak memory is
`torch.cuda.max_memory_allocated` over one run (for graphs: over the capture, which
holds the memory that their replays reuse).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.timing import interleaved_best
from benchmarks.training_step import step_runs
from core.inference import FlowEstimator
from core.network import DecFlow
from core.reference import straightforward_forward


def cuda_ms(fn: Callable[[], object]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def kernel_ms(fn: Callable[[], object]) -> float:
    """Milliseconds of GPU kernels (and copies) in one run of `fn`."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(event.self_device_time_total for event in prof.key_averages()) / 1e3


def peak_gb(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 1e9


def bench_inference_cuda(
    model: DecFlow,
    image1: torch.Tensor,
    image2: torch.Tensor,
    *,
    iters: int,
    amp_dtype: torch.dtype,
    warmup: int,
    repeats: int,
) -> list[dict]:
    """Rows per mode: ms, GPU kernel ms, peak GB, mean/max |flow - our fp32 flow| in px."""

    def fast(dtype: torch.dtype | None, graphs: bool, alternate_corr: bool = False) -> FlowEstimator:
        return FlowEstimator(
            model, iters=iters, device=image1.device, amp_dtype=dtype, alternate_corr=alternate_corr, cuda_graphs=graphs
        )

    estimators = {
        "fast": fast(None, False),
        "fast-amp": fast(amp_dtype, False),
        "graphs": fast(None, True),
        "graphs-amp": fast(amp_dtype, True),
        "alternate-amp": fast(amp_dtype, True, alternate_corr=True),
    }
    runs = {
        "straightforward": lambda: straightforward_forward(model, image1, image2, iters=iters, test_mode=True),
        "straightforward-amp": lambda: straightforward_forward(
            model, image1, image2, iters=iters, test_mode=True, amp_dtype=amp_dtype
        ),
        **{name: (lambda estimator=estimator: estimator(image1, image2)) for name, estimator in estimators.items()},
    }
    with torch.no_grad():
        peaks = {name: peak_gb(fn) for name, fn in runs.items()}  # first call: graphs are captured here
        outputs = {name: fn() for name, fn in runs.items()}
        gpu = {name: kernel_ms(fn) for name, fn in runs.items()}
        ms = interleaved_best(runs, warmup, repeats, timer=cuda_ms)
    reference = outputs["fast"]
    rows = []
    for name in runs:
        out = outputs[name]
        diff = torch.cat([(out.facial - reference.facial).abs().flatten(), (out.head - reference.head).abs().flatten()])
        rows.append(
            {
                "mode": name,
                "ms": ms[name],
                "gpu_ms": gpu[name],
                "speedup": ms["straightforward"] / ms[name],
                "peak_gb": peaks[name],
                "mean_diff_px": diff.mean().item(),
                "max_diff_px": diff.max().item(),
            }
        )
    return rows


def bench_batches_cuda(
    model: DecFlow,
    image1: torch.Tensor,
    image2: torch.Tensor,
    *,
    iters: int,
    amp_dtype: torch.dtype,
    batches: tuple[int, ...],
    warmup: int,
    repeats: int,
) -> list[dict]:
    """Pairs per second of the default path (CUDA graphs, `amp_dtype`) at each batch size, on
    copies of one pair; max |flow - batch 1 flow| in px (the same flow whatever the batch)."""
    estimator = FlowEstimator(model, iters=iters, device=image1.device, amp_dtype=amp_dtype)
    inputs = {
        batch: (image1[:1].expand(batch, -1, -1, -1).contiguous(), image2[:1].expand(batch, -1, -1, -1).contiguous())
        for batch in batches
    }
    runs = {f"batch {batch}": (lambda pair=pair: estimator(*pair)) for batch, pair in inputs.items()}
    peaks = {name: peak_gb(fn) for name, fn in runs.items()}  # captures the graphs
    outputs = {name: fn() for name, fn in runs.items()}
    ms = interleaved_best(runs, warmup, repeats, timer=cuda_ms)
    single = estimator(image1[:1], image2[:1]).facial
    return [
        {
            "mode": name,
            "ms": ms[name],
            "pairs_per_s": 1e3 * batch / ms[name],
            "peak_gb": peaks[name],
            "max_diff_px": (outputs[name].facial - single).abs().max().item(),
        }
        for batch, name in zip(batches, runs)
    ]


def bench_train_cuda(
    model: DecFlow,
    image1: torch.Tensor,
    image2: torch.Tensor,
    *,
    iters: int,
    amp_dtype: torch.dtype,
    warmup: int,
    repeats: int,
) -> list[dict]:
    """A training step (forward, sequence loss, backward, clip, AdamW) per mode: ms and peak GB."""

    straightforward = partial(straightforward_forward, model)
    modes = {
        "straightforward": (straightforward, None),
        "straightforward-amp": (straightforward, amp_dtype),
        "fast": (model, None),
        "fast-amp": (model, amp_dtype),
    }
    runs = step_runs(model, image1, image2, iters=iters, modes=modes, lr=1e-6)
    peaks = {name: peak_gb(fn) for name, fn in runs.items()}
    ms = interleaved_best(runs, warmup, repeats, timer=cuda_ms)
    model.eval()
    return [
        {"mode": name, "ms": ms[name], "speedup": ms["straightforward"] / ms[name], "peak_gb": peaks[name]}
        for name in runs
    ]
