"""Speed and memory of DecFlow on this machine, fast paths against the straightforward forward.

    python -m benchmarks.benchmark all                 # every table: inference, training step, peak memory
    python -m benchmarks.benchmark inference --size 480 480 --iters 12
    python -m benchmarks.benchmark train --size 256 256 --batch 2 --iters 12
    python -m benchmarks.benchmark memory --size 1024 1024 --mode default alternate
    python -m benchmarks.benchmark all --device cuda  # 480x480, 1024x1024, 1920x1080 and a seed-recipe step
    python -m benchmarks.benchmark batch --device cuda  # pairs/s at batch 1, 4, 8 (480x480, graphs, AMP)

Timings are taken side by side in one run (modes interleaved, best of `--repeats` after
`--warmup` runs) and reported as ratios to the straightforward fp32 forward of
core/reference.py. Peak memory is the peak resident set size (VmHWM) of a fresh
subprocess that imports torch, builds the model and runs one pair. On CUDA see
benchmarks/gpu.py (CUDA events, kernel time, torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.gpu import bench_batches_cuda, bench_inference_cuda, bench_train_cuda
from benchmarks.timing import interleaved_best
from benchmarks.training_step import step_runs
from core.cli import DocstringHelpFormatter
from core.inference import FlowEstimator, resolve_inference_precision
from core.network import DecFlow
from core.precision import AMP_DTYPES, amp_dtype_name
from core.reference import straightforward_forward


def build_model(seed: int = 0) -> DecFlow:
    torch.manual_seed(seed)
    model = DecFlow()
    with torch.no_grad():  # gamma starts at 0; give the aggregation real work to do
        model.update_block.aggregator.gamma.fill_(0.5)
        model.update_block_head.aggregator.gamma.fill_(0.5)
    return model


def make_pair(batch: int, height: int, width: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image1 = torch.rand(batch, 3, height, width, generator=generator) * 255
    return image1, torch.roll(image1, shifts=(3, -4), dims=(-2, -1))


def _flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def mixed_mode_name(amp_dtype: torch.dtype) -> str:
    """Row name of the mixed-precision fast path: fast-bf16 or fast-fp16."""
    return "fast-" + {"bfloat16": "bf16", "float16": "fp16"}[amp_dtype_name(amp_dtype)]


def bench_inference(
    size: tuple[int, int], iters: int, batch: int, warmup: int, repeats: int, amp_dtype: torch.dtype | None
) -> list[dict]:
    """Rows for the straightforward forward, the fast path in fp32 and in `amp_dtype` (None: no such row)
    and the memory-bounded mode."""
    model = build_model().eval()
    image1, image2 = make_pair(batch, *size)

    def fast(dtype: torch.dtype | None, alternate_corr: bool = False):
        estimator = FlowEstimator(model, iters=iters, device="cpu", amp_dtype=dtype, alternate_corr=alternate_corr)
        return lambda: estimator(image1, image2)

    runs = {
        "straightforward": lambda: straightforward_forward(model, image1, image2, iters=iters, test_mode=True),
        "fast": fast(None),
        **({mixed_mode_name(amp_dtype): fast(amp_dtype)} if amp_dtype else {}),
        "alternate": fast(None, alternate_corr=True),
    }
    with torch.no_grad():
        outputs = {name: fn() for name, fn in runs.items()}
        flops = {name: _flops(fn) for name, fn in runs.items()}
        seconds = interleaved_best(runs, warmup, repeats)
    reference = outputs["straightforward"]
    rows = []
    for name in runs:
        out = outputs[name]
        diff = torch.cat([(out.facial - reference.facial).abs().flatten(), (out.head - reference.head).abs().flatten()])
        rows.append(
            {
                "mode": name,
                "pairs_per_s": batch / seconds[name],
                "speedup": seconds["straightforward"] / seconds[name],
                "gflop": flops[name] / 1e9,
                "gflop_per_s": flops[name] / 1e9 / seconds[name],
                "max_diff_px": diff.max().item(),
                "mean_diff_px": diff.mean().item(),
            }
        )
    return rows


def conv_peak_gflops(dtype: torch.dtype, repeats: int = 20) -> float:
    """GFLOP/s of one large channels-last 3x3 convolution (256 -> 256 channels at 60x60, the
    decoder's working size): about the most this machine's convolutions deliver, hence the
    ceiling of any forward made of convolutions."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(1, 256, 60, 60).contiguous(memory_format=torch.channels_last)
    flop = 2 * 256 * 256 * 9 * 60 * 60
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        seconds = interleaved_best({"conv": lambda: conv(x)}, warmup=3, repeats=repeats)["conv"]
    return flop / seconds / 1e9


def bench_train(
    size: tuple[int, int], iters: int, batch: int, warmup: int, repeats: int, amp_dtype: torch.dtype | None
) -> list[dict]:
    model = build_model()
    image1, image2 = make_pair(batch, *size)

    straightforward = partial(straightforward_forward, model)
    modes = {
        "straightforward": (straightforward, None),
        "fast": (model, None),
        **({mixed_mode_name(amp_dtype): (model, amp_dtype)} if amp_dtype else {}),
    }
    runs = step_runs(model, image1, image2, iters=iters, modes=modes, lr=1e-5)
    seconds = interleaved_best(runs, warmup, repeats)
    return [
        {"mode": name, "steps_per_s": 1 / seconds[name], "speedup": seconds["straightforward"] / seconds[name]}
        for name in runs
    ]


def peak_memory_gb(size: tuple[int, int], mode: str, iters: int) -> float:
    """Peak RSS of a fresh process running one pair (the model and libraries included)."""
    command = [
        sys.executable,
        "-c",
        f"from benchmarks.benchmark import measure_peak; measure_peak({tuple(size)!r}, {mode!r}, {iters})",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_gb"]


def measure_peak(size: tuple[int, int], mode: str, iters: int) -> None:
    """Run one pair in this (fresh) process and print its peak memory as JSON."""
    model = build_model().eval()
    image1, image2 = make_pair(1, *size)
    with torch.no_grad():
        out = model(image1, image2, iters=iters, test_mode=True, alternate_corr=mode == "alternate")
    assert torch.isfinite(out.facial).all()
    print(json.dumps({"peak_gb": peak_rss_bytes() / 1e9}))


def peak_rss_bytes() -> int:
    """High-water resident set size of this process image. Linux's VmHWM starts afresh at
    exec, while ru_maxrss would include the parent's peak at fork time."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def format_table(title: str, rows: list[dict]) -> str:
    columns = list(rows[0])
    width = max(14, *(len(str(v)) for row in rows for v in row.values() if not isinstance(v, float)))
    lines = [title, "  ".join(f"{c:>{width}}" for c in columns)]
    for row in rows:
        lines.append("  ".join(f"{v:>{width}.4g}" if isinstance(v, float) else f"{v:>{width}}" for v in row.values()))
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m benchmarks.benchmark",
        description=__doc__,
        formatter_class=DocstringHelpFormatter,
    )
    parser.add_argument("what", choices=("all", "inference", "batch", "train", "memory"), help="which benchmark")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="image size (default on CPU: 480 480 inference, 256 256 train, 1024 1024 memory; "
        "with --device cuda: inference at 480x480, 1024x1024 and 1920x1080, train 480 480)",
    )
    parser.add_argument("--iters", type=int, default=12, help="refinement iterations (default 12)")
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="batch size (default 1 inference; train: 2 on CPU, 6 with --device cuda)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per mode (default 1; at least 2 on CUDA)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode, the best is kept (default 3)")
    parser.add_argument(
        "--mode",
        nargs="+",
        default=["default", "alternate"],
        choices=("default", "alternate"),
        help="memory benchmark modes",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--amp_dtype",
        choices=sorted(AMP_DTYPES),
        default=None,
        help="dtype of the mixed-precision rows (default: float16 on CUDA; on CPU bfloat16 where "
        "the CPU has it natively, else no such rows)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="cpu (the default, also where CUDA is present), or cuda: inference at 480x480, 1024x1024 and "
        "1920x1080 (or --size) and a training step at the seed recipe (480x480, batch 6)",
    )
    return parser


CUDA_SIZES = ((480, 480), (1024, 1024), (1080, 1920))  # the table of the README
BATCHES = (1, 4, 8)  # the batched-inference table (CUDA): evaluate.py / get_flow.py --batch_size


def main_cuda(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    if args.what == "memory":
        raise SystemExit("--device cuda: peak memory is a column of the inference and train tables")
    device = torch.device("cuda")
    amp_dtype = resolve_inference_precision(True, args.amp_dtype, device, warn=print)
    print(
        f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}, cuDNN {torch.backends.cudnn.version()}, "
        f"iters {args.iters}, AMP {amp_dtype_name(amp_dtype)}",
        flush=True,
    )
    warmup, repeats = max(args.warmup, 2), args.repeats
    if args.what in ("all", "inference"):
        for size in [tuple(args.size)] if args.size else CUDA_SIZES:
            model = build_model().eval().to(device)
            image1, image2 = (image.to(device) for image in make_pair(args.batch or 1, *size))
            rows = bench_inference_cuda(
                model, image1, image2, iters=args.iters, amp_dtype=amp_dtype, warmup=warmup, repeats=repeats
            )
            print(
                format_table(
                    f"\ninference {size[0]}x{size[1]}, batch {args.batch or 1} (ms per call; speedup vs "
                    f"straightforward fp32; diff vs fast fp32)",
                    rows,
                ),
                flush=True,
            )
            del model, image1, image2
            torch.cuda.empty_cache()
    if args.what in ("all", "batch"):
        size = tuple(args.size or (480, 480))
        model = build_model().eval().to(device)
        image1, image2 = (image.to(device) for image in make_pair(1, *size))
        rows = bench_batches_cuda(
            model,
            image1,
            image2,
            iters=args.iters,
            amp_dtype=amp_dtype,
            batches=BATCHES,
            warmup=warmup,
            repeats=repeats,
        )
        print(
            format_table(
                f"\nbatched inference {size[0]}x{size[1]}, graphs, {amp_dtype_name(amp_dtype)} autocast "
                "(ms per call; diff vs batch 1)",
                rows,
            ),
            flush=True,
        )
        del model, image1, image2
        torch.cuda.empty_cache()
    if args.what in ("all", "train"):
        size = tuple(args.size or (480, 480))
        model = build_model().to(device)
        image1, image2 = (image.to(device) for image in make_pair(args.batch or 6, *size))
        rows = bench_train_cuda(
            model, image1, image2, iters=args.iters, amp_dtype=amp_dtype, warmup=warmup, repeats=repeats
        )
        print(format_table(f"\ntraining step {size[0]}x{size[1]}, batch {args.batch or 6}", rows), flush=True)


def main(args: argparse.Namespace) -> None:
    if args.device == "cuda":
        main_cuda(args)
        return
    if args.what == "batch":
        raise SystemExit("batch: the batched-inference table is measured on CUDA (--device cuda)")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, iters {args.iters}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}",
        flush=True,
    )
    amp_dtype = None
    if args.what in ("all", "inference", "train"):
        amp_dtype = resolve_inference_precision(
            True,
            args.amp_dtype,
            torch.device("cpu"),
            warn=lambda line: print(line + "; no mixed-precision rows", flush=True),
        )
    if args.what in ("all", "inference"):
        size = tuple(args.size or (480, 480))
        print(
            f"convolution peak on this CPU: {conv_peak_gflops(torch.float32):.0f} GFLOP/s fp32, "
            f"{conv_peak_gflops(torch.bfloat16):.0f} GFLOP/s bf16",
            flush=True,
        )
        rows = bench_inference(size, args.iters, args.batch or 1, args.warmup, args.repeats, amp_dtype)
        print(
            format_table(
                f"\ninference {size[0]}x{size[1]}, batch {args.batch or 1} (speedup vs straightforward fp32)", rows
            ),
            flush=True,
        )
    if args.what in ("all", "train"):
        size = tuple(args.size or (256, 256))
        rows = bench_train(size, args.iters, args.batch or 2, args.warmup, args.repeats, amp_dtype)
        print(format_table(f"\ntraining step {size[0]}x{size[1]}, batch {args.batch or 2}", rows), flush=True)
    if args.what in ("all", "memory"):
        sizes = [tuple(args.size)] if args.size else [(1024, 1024), (1080, 1920)]
        rows = []
        for size in sizes:
            for mode in args.mode:
                if mode == "default" and size == (1080, 1920) and not args.size:
                    continue  # the dense matrices alone exceed the machine's budget here
                start = time.perf_counter()
                rows.append(
                    {
                        "size": f"{size[0]}x{size[1]}",
                        "mode": mode,
                        "peak_gb": peak_memory_gb(size, mode, args.iters),
                        "seconds": time.perf_counter() - start,
                    }
                )
        print(format_table("\npeak memory, one pair (fresh process)", rows), flush=True)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
