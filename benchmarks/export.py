"""The ONNX export against the eager model: parity at two sizes, then speed side by side.

    python -m benchmarks.export                                  # CPU: 480x480 and 256x320, 12 iterations
    python -m benchmarks.export --device cuda                    # onnxruntime's CUDA provider vs eager float16
    python -m benchmarks.export --onnx decflow.onnx --model checkpoints/decflow-facialflownet.pth

One file is exported (traced at core.export.TRACE_SIZE, or `--onnx` given with the `--model`
it was exported from), then checked at every `--parity_size` (worst |onnxruntime - eager
float32| of facial, head and expression flow), then timed at `--size`, modes interleaved
(best of `--repeats`): onnxruntime, eager float32 and eager in the mixed-precision dtype
where this device has it natively (bfloat16 on CPUs with AVX-512 BF16 or AMX, float16 on
CUDA). Without `--model` the weights are benchmarks.benchmark.build_model's.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch

from benchmarks.benchmark import build_model, make_pair
from benchmarks.timing import interleaved_best
from core.cli import DocstringHelpFormatter
from core.export import TRACE_SIZE, export_file, parity
from core.inference import FlowEstimator, load_model, resolve_inference_precision
from core.network import DecFlowConfig
from core.onnx_runtime import OnnxFlowEstimator
from core.precision import amp_dtype_name

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m benchmarks.export",
        description=__doc__,
        formatter_class=DocstringHelpFormatter,
    )
    parser.add_argument("--model", default=None, help="checkpoint (default: benchmarks.benchmark.build_model)")
    parser.add_argument("--onnx", default=None, help="an export of --model to use instead of exporting")
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 480), metavar=("H", "W"), help="timed size")
    parser.add_argument(
        "--parity_size", type=int, nargs=2, action="append", default=None, metavar=("H", "W"), help="480 480, 256 320"
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=sorted(PROVIDERS), default="cpu")
    return parser


def timed_runs(model, onnx_path: Path, args: argparse.Namespace) -> dict:
    """name -> callable, for the modes this device has."""
    device = torch.device(args.device)
    image1, image2 = make_pair(1, *args.size)
    runs = {}
    if PROVIDERS[args.device] in ort.get_available_providers():
        onnx_flow = OnnxFlowEstimator(onnx_path, providers=[PROVIDERS[args.device]])
        runs[f"onnxruntime-{args.device}"] = lambda: onnx_flow(image1, image2)
    else:
        print(f"onnxruntime has no {PROVIDERS[args.device]} here (onnxruntime-gpu provides CUDA's)")
    model = model.to(device)
    amp_dtype = resolve_inference_precision(True, None, device, warn=print)
    for dtype in dict.fromkeys([None, amp_dtype]):
        estimator = FlowEstimator(model, iters=args.iters, device=device, amp_dtype=dtype)
        runs[f"eager-{amp_dtype_name(dtype)}"] = lambda estimator=estimator: estimator(image1, image2)
    return runs


def main(args: argparse.Namespace) -> dict:
    model = build_model() if args.model is None else load_model(args.model, config=DecFlowConfig(), device="cpu")
    model = model.eval()
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = Path(args.onnx) if args.onnx else Path(folder) / "decflow.onnx"
        if not args.onnx:
            export_file(model, onnx_path, iters=args.iters, size=TRACE_SIZE, weights_sha256="benchmark weights")
        results = {"parity": {}, "seconds": {}}
        for size in args.parity_size or [(480, 480), (256, 320)]:
            worst = parity(model, onnx_path, iters=args.iters, size=tuple(size))
            results["parity"][f"{size[0]}x{size[1]}"] = worst
            line = ", ".join(f"{name} {value:.1e}" for name, value in worst.items())
            print(f"parity {size[0]}x{size[1]}, {args.iters} iterations (worst |onnxruntime - eager fp32| px): {line}")
        runs = timed_runs(model, onnx_path, args)
        best = interleaved_best(runs, args.warmup, args.repeats)
    reference = best["eager-float32"]
    print(f"export speed {args.size[0]}x{args.size[1]}, {args.iters} iterations, batch 1, {args.device}:")
    for name, seconds in best.items():
        print(f"  {name:<22} {seconds:8.3f} s   {reference / seconds:5.2f}x eager float32")
    results["seconds"] = best
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
