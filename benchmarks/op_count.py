"""Backend operations per training step and per inference: a device-independent view of launches.

    python -m benchmarks.op_count --batch 6 --size 128 128 --iters 12

At batch 1 the CUDA forward is launch-bound (see the README's performance section), so the
number of operations that reach a kernel matters there as much as their FLOPs. This counts
every ATen call below autograd (forward and backward; views and other metadata-only calls
listed apart) for the straightforward forward (`core/reference.py`) and the fast path,
on the CPU: the counts are what a GPU would launch, give or take fused kernels, and can be
checked without one.
"""

from __future__ import annotations

import argparse
import collections
from collections.abc import Callable
from functools import partial

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.benchmark import build_model
from core.network import DecFlow
from core.reference import straightforward_forward

# ATen calls that only make a new view of existing memory (no kernel on any device)
METADATA_ONLY = frozenset(
    {
        "alias",
        "as_strided",
        "chunk",
        "detach",
        "expand",
        "permute",
        "reshape",
        "select",
        "slice",
        "split",
        "split_with_sizes",
        "squeeze",
        "t",
        "transpose",
        "unbind",
        "unflatten",
        "unsqueeze",
        "view",
        "_unsafe_view",
    }
)


class OpCounter(TorchDispatchMode):
    """Counts the ATen calls that reach the backend while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    @property
    def kernels(self) -> int:
        """Calls that do work (everything but views)."""
        return sum(n for name, n in self.calls.items() if name not in METADATA_ONLY)


def count_step(
    model: DecFlow,
    image1: torch.Tensor,
    image2: torch.Tensor,
    *,
    iters: int,
    train: bool,
    forward: Callable | None = None,
) -> OpCounter:
    """Ops of one forward of `model` (or `forward(image1, image2, iters=, test_mode=)` running it;
    `test_mode` unless `train`) and, in training, the backward of the sum of every prediction's
    mean absolute value, into fresh `.grad`s (accumulating into existing ones counts other calls)."""
    model.zero_grad(set_to_none=True)
    with OpCounter() as counter:
        with torch.set_grad_enabled(train):
            out = (forward or model)(image1, image2, iters=iters, test_mode=not train)
            if train:
                sum(p.abs().mean() for p in out[0] + out[1]).backward()
    return counter


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=6, help="pairs per step (the seed recipe's 6)")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[128, 128],
        metavar=("H", "W"),
        help="image size (the counts hardly depend on it; small is quick)",
    )
    parser.add_argument("--iters", type=int, default=12, help="recurrent iterations")
    return parser


def main(args: argparse.Namespace) -> None:
    model = build_model()
    generator = torch.Generator().manual_seed(0)
    image1 = 255 * torch.rand(args.batch, 3, *args.size, generator=generator)
    image2 = torch.roll(image1, shifts=(2, 3), dims=(-2, -1))
    forwards = {"straightforward": partial(straightforward_forward, model), "fast path": model}
    print(f"backend ops, batch {args.batch}, {args.size[0]}x{args.size[1]}, {args.iters} iterations, float32")
    print(f"{'':<28}{'kernels':>10}{'views':>10}")
    for train in (False, True):
        model.train(train)
        for name, forward in forwards.items():
            counter = count_step(model, image1, image2, iters=args.iters, train=train, forward=forward)
            label = f"{name} {'training step' if train else 'inference'}"
            print(f"{label:<28}{counter.kernels:>10}{sum(counter.calls.values()) - counter.kernels:>10}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
