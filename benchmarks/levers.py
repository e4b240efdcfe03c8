"""Training-step levers: each alone on top of our fast mixed-precision step, and all together.

    python -m benchmarks.levers --device cuda      # the seed recipe: 480x480, batch 6, 12 iterations, float16
    python -m benchmarks.levers                    # CPU: 128x128, batch 1, 2 iterations (bfloat16 where native)
    python -m benchmarks.levers --levers fast fused-adamw channels-last

Rows (`LEVERS`): `straightforward` is the reference layout (core/reference.py) with the
reference's autocast regions, `fast` our forward before any lever, both with torch's default
AdamW (foreach kernels on CUDA, a Python loop over the tensors on CPU). train.py now runs
`fast` with build_optimizer's kernels: fused on CUDA (`fused-adamw`), foreach elsewhere
(`foreach-adamw`). `channels-last` stores the weights channels-last (the activations already
are); `compiled` runs torch.compile on the modules every iteration calls (motion encoder,
flow head, mask head; its compile time is left out of the timings).

Every row trains its own copy of one seeded model on the same batch; steps alternate
between rows (best of `--repeats` after `--warmup`). `ms` is CUDA-event or wall time per
step, `speedup` is relative to `straightforward`. `peak_gb`: on CUDA the memory the row
allocated (its model copy, gradients, AdamW state and the step's working memory); on CPU
the peak resident set of a fresh process running one such step (libraries included).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from benchmarks.benchmark import build_model, format_table, make_pair, peak_rss_bytes
from benchmarks.gpu import cuda_ms
from benchmarks.timing import interleaved_best, wall_seconds
from benchmarks.training_step import make_step, random_targets
from core.inference import resolve_inference_precision
from core.network import DecFlow
from core.precision import AMP_DTYPES, amp_dtype_name, parse_amp_dtype
from core.reference import straightforward_forward

ADAMW = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}  # AdamW keyword arguments
LR = 1e-6  # small: the weights hardly move while the rows are timed


@dataclass(frozen=True)
class Lever:
    """One way to run the training step."""

    adamw: str = "default"  # key of ADAMW
    channels_last: bool = False  # weights in channels-last memory format
    compiled: bool = False  # torch.compile of the modules every decoder iteration calls
    straightforward: bool = False  # the reference layout instead of our forward


LEVERS = {
    "straightforward": Lever(straightforward=True),
    "fast": Lever(),
    "foreach-adamw": Lever(adamw="foreach"),
    "fused-adamw": Lever(adamw="fused"),
    "channels-last": Lever(channels_last=True),
    "compiled": Lever(compiled=True),
    "combined": Lever(adamw="fused", channels_last=True, compiled=True),
}


def build_lever(
    base: DecFlow,
    lever: Lever,
    device: torch.device,
    image1: torch.Tensor,
    image2: torch.Tensor,
    *,
    iters: int,
    amp_dtype: torch.dtype | None,
) -> Callable[[], None]:
    """A training step of a copy of `base` run as `lever` prescribes."""
    model = copy.deepcopy(base).to(device).train()
    if lever.channels_last:
        model.to(memory_format=torch.channels_last)
    if lever.compiled:
        for decoder in (model.update_block, model.update_block_head):
            for module in (decoder.encoder, decoder.flow_head, decoder.mask):
                module.compile(dynamic=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, **ADAMW[lever.adamw])
    forward = partial(straightforward_forward, model) if lever.straightforward else model
    return make_step(model, optimizer, forward, amp_dtype, image1, image2, random_targets(image1), iters=iters)


def bench_levers(
    names: list[str],
    *,
    device: torch.device,
    size: tuple[int, int],
    batch: int,
    iters: int,
    amp_dtype: torch.dtype | None,
    warmup: int,
    repeats: int,
) -> list[dict]:
    """One row per lever in `names`: ms per step, speedup over `straightforward`, peak GB. A
    lever that fails to run (say, torch.compile without a working compiler) is reported with
    its error and NaN figures; the other rows still count."""
    base = build_model()
    image1, image2 = (image.to(device) for image in make_pair(batch, *size))
    steps, peaks = {}, {}
    for name in names:
        try:
            steps[name], peaks[name] = prepare_lever(
                base, name, device, image1, image2, iters=iters, amp_dtype=amp_dtype, warmup=warmup
            )
        except Exception:  # noqa: BLE001 (one device call must still give the other rows)
            print(f"lever {name} failed:\n{traceback.format_exc()}", flush=True)
    ms = interleaved_best(steps, 0, repeats, timer=cuda_ms if device.type == "cuda" else wall_ms)
    reference = ms.get("straightforward")
    return [
        {
            "mode": name if name in ms else f"{name} (failed)",
            "ms": ms.get(name, float("nan")),
            "speedup": reference / ms[name] if reference and name in ms else float("nan"),
            "peak_gb": peaks.get(name, float("nan")),
        }
        for name in names
    ]


def prepare_lever(
    base: DecFlow,
    name: str,
    device: torch.device,
    image1: torch.Tensor,
    image2: torch.Tensor,
    *,
    iters: int,
    amp_dtype: torch.dtype | None,
    warmup: int,
) -> tuple[Callable[[], None], float]:
    """Lever `name`'s step, warmed up (compiled, its AdamW state allocated), and its peak GB."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
    step = build_lever(base, LEVERS[name], device, image1, image2, iters=iters, amp_dtype=amp_dtype)
    for _ in range(max(warmup, 1)):
        step()
    if device.type != "cuda":
        return step, fresh_process_peak_gb(
            name, size=tuple(image1.shape[-2:]), batch=image1.shape[0], iters=iters, amp_dtype=amp_dtype
        )
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return step, (torch.cuda.max_memory_allocated() - before) / 1e9


def wall_ms(fn: Callable[[], object]) -> float:
    return 1e3 * wall_seconds(fn)


def fresh_process_peak_gb(
    name: str, *, size: tuple[int, int], batch: int, iters: int, amp_dtype: torch.dtype | None
) -> float:
    """Peak resident set of a fresh CPU process running two steps of lever `name`."""
    dtype = None if amp_dtype is None else amp_dtype_name(amp_dtype)
    command = [
        sys.executable,
        "-c",
        f"from benchmarks.levers import measure_peak; "
        f"measure_peak({name!r}, {tuple(size)!r}, {batch}, {iters}, {dtype!r})",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_gb"]


def measure_peak(name: str, size: tuple[int, int], batch: int, iters: int, dtype: str | None) -> None:
    """Run two CPU steps of lever `name` in this (fresh) process; print its peak memory as JSON."""
    image1, image2 = make_pair(batch, *size)
    step = build_lever(
        build_model(), LEVERS[name], torch.device("cpu"), image1, image2, iters=iters, amp_dtype=parse_amp_dtype(dtype)
    )
    step()
    step()
    print(json.dumps({"peak_gb": peak_rss_bytes() / 1e9}))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the steps run")
    parser.add_argument(
        "--levers",
        nargs="+",
        default=list(LEVERS),
        choices=list(LEVERS),
        metavar="LEVER",
        help=f"rows, in this order (default: all of {', '.join(LEVERS)})",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="training crop (default: 480 480 on CUDA, 128 128 on CPU)",
    )
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 6 on CUDA, 1 on CPU)")
    parser.add_argument("--iters", type=int, default=None, help="iterations (default: 12 on CUDA, 2 on CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per row (at least 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per row (best is kept)")
    parser.add_argument(
        "--amp_dtype",
        choices=sorted(AMP_DTYPES),
        default=None,
        help="autocast dtype (default: float16 on CUDA; on CPU bfloat16 where native, else float32)",
    )
    return parser


def main(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    cuda = device.type == "cuda"
    size = tuple(args.size or ((480, 480) if cuda else (128, 128)))
    batch, iters = args.batch or (6 if cuda else 1), args.iters or (12 if cuda else 2)
    amp_dtype = resolve_inference_precision(
        True, args.amp_dtype, device, warn=lambda line: print(line + "; float32 rows", flush=True)
    )
    where = torch.cuda.get_device_name(device) if cuda else f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    print(
        f"torch {torch.__version__}, {where}; training step {size[0]}x{size[1]}, batch {batch}, {iters} "
        f"iterations, {amp_dtype_name(amp_dtype)} autocast",
        flush=True,
    )
    rows = bench_levers(
        args.levers,
        device=device,
        size=size,
        batch=batch,
        iters=iters,
        amp_dtype=amp_dtype,
        warmup=args.warmup,
        repeats=args.repeats,
    )
    print(format_table("\ntraining-step levers (ms per step; speedup vs straightforward)", rows), flush=True)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
