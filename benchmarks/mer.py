"""Micro-expression recognition: the time of the whole leave-one-subject-out training.

    python -m benchmarks.mer                 # 442 clips, 68 subjects, 800 epochs (the MEGC 2019 composite)
    python -m benchmarks.mer --epochs 4      # a few epochs, the 800-epoch time extrapolated

The inputs are random tensors of the classifier's shape (`[N, 3, 28, 28]`, 3 classes, subjects
taking turns), so the time is the protocol's alone (STSTNet, batch 256, TrainConfig's recipe).
Printed: clips, folds, epochs, the measured seconds and those scaled to `--full_epochs`; the
FLOP-bound time (the convolutions' and linear layer's forward + backward FLOPs of every sample of
every fold's every epoch, over this machine's measured fp32 matmul GFLOP/s); one epoch of
`--folds_at_once` folds trained at once (the training steps in the compiled kernel, `core.mer.kernel`,
and on PyTorch's kernels) against the same folds one at a time (`train_fold`), the modes alternating
so that the other load on the machine hits them alike; and the folded epoch's heaviest operators.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F
from torch.profiler import profile
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.timing import interleaved_best
from core.mer import kernel
from core.mer.loso import TrainConfig, make_folds, train_fold, train_folds_at_once, train_loso
from core.mer.models import CONV_PADDING, DROPOUT_LEVELS, STREAMS, FusedFoldStep, STSTNet, pool_side
from core.utils.progress import progress_bar

MEGC_CLIPS = 442  # the MEGC 2019 composite: CASME II 145 + SAMM 133 + SMIC-HS 164 clips
MEGC_SUBJECTS = 68  # 24 + 28 + 16 subjects
CLASSES = 3
MATMUL_SIDE = 2048  # the square fp32 matmul whose rate bounds the FLOPs
COMPARE_REPEATS = 2  # folds at once against one at a time: best of this many alternating runs
TOP_OPERATORS = 8


def random_protocol(clips: int, subjects: int, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Seeded random inputs `[clips, 3, size, size]`, targets and subjects taking turns."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(clips, 3, size, size, generator=generator)
    targets = torch.randint(0, CLASSES, (clips,), generator=generator)
    return inputs, targets, [f"s{i % subjects:02d}" for i in range(clips)]


def flops_per_sample(size: int, batch: int) -> float:
    """Forward + backward FLOPs of one sample in an STSTNet training step (convolutions and linear)."""
    model = STSTNet(size=size)
    x = torch.randn(batch, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long)).backward()
    return counter.get_total_flops() / batch


def matmul_gflops() -> float:
    """fp32 GFLOP/s of a large square matmul on this machine (best of a few)."""
    a, b = torch.randn(MATMUL_SIDE, MATMUL_SIDE), torch.randn(MATMUL_SIDE, MATMUL_SIDE)
    seconds = interleaved_best({"matmul": lambda: a @ b}, warmup=2, repeats=5)["matmul"]
    return 2 * MATMUL_SIDE**3 / seconds / 1e9


def step_seconds(size: int, batch: int) -> float:
    """Seconds per sample of one fold's compiled training step alone (`FusedFoldStep` forward and backward with
    dropout, 3 classes, on one of this process's threads: the kernel is single-threaded), a batch of `batch`."""
    generator = torch.Generator().manual_seed(0)
    padded = F.pad(torch.randn(batch, 3, size, size, generator=generator), (CONV_PADDING,) * 4)
    side = pool_side(size)
    params = [0.3 * torch.randn(STREAMS, 3, 3, 3, generator=generator), torch.zeros(STREAMS)]
    params += [torch.ones(STREAMS), torch.zeros(STREAMS)]
    params += [0.01 * torch.randn(CLASSES, side * side * STREAMS, generator=generator), torch.zeros(CLASSES)]
    params = [p.requires_grad_() for p in params]
    draws = torch.randint(0, DROPOUT_LEVELS, (batch, side, side, STREAMS), dtype=torch.int32, generator=generator)
    rows = torch.arange(batch)
    buffers = kernel.Buffers.empty(batch, side=size, pooled_side=side)  # reused, as FoldedSTSTNet does

    def step() -> None:
        logits, _, _ = FusedFoldStep.apply(padded, rows, *params, draws, TrainConfig.dropout, buffers.first(batch))
        logits.sum().backward()

    return interleaved_best({"step": step}, warmup=2, repeats=5)["step"] / batch


def per_fold_epoch(inputs: torch.Tensor, targets: torch.Tensor, groups: list[str], config: TrainConfig) -> dict:
    """Seconds per fold-epoch of `config.folds_at_once` folds trained at once (the steps compiled, and on
    PyTorch's kernels) and the same folds one at a time (`train_fold`), one epoch each, on this thread's
    torch threads, the modes alternating (best of `COMPARE_REPEATS`)."""
    folds = make_folds(groups, seed=config.seed)[: config.folds_at_once]
    one_epoch = dataclasses.replace(config, epochs=1)

    def at_once(compiled: bool) -> None:
        mode = dataclasses.replace(one_epoch, compiled=compiled)
        with progress_bar(disable=True) as bar:
            train_folds_at_once(inputs, targets, folds, num_classes=CLASSES, config=mode, bar=bar)

    def one_at_a_time() -> None:
        for fold in folds:
            train_fold(inputs, targets, fold, num_classes=CLASSES, config=one_epoch)

    runs = {"compiled": lambda: at_once(True), "pytorch": lambda: at_once(False), "one at a time": one_at_a_time}
    if kernel.stage_library() is None:
        del runs["compiled"]
    seconds = interleaved_best(runs, warmup=0, repeats=COMPARE_REPEATS)
    return {name: value / len(folds) for name, value in seconds.items()}


def heaviest_operators(inputs: torch.Tensor, targets: torch.Tensor, groups: list[str], config: TrainConfig) -> str:
    """The profiler's table of one epoch of `config.folds_at_once` folds trained at once."""
    folds = make_folds(groups, seed=config.seed)[: config.folds_at_once]
    one_epoch = dataclasses.replace(config, epochs=1)
    with progress_bar(disable=True) as bar, profile() as profiler:
        train_folds_at_once(inputs, targets, folds, num_classes=CLASSES, config=one_epoch, bar=bar)
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=TOP_OPERATORS)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("--clips", type=int, default=MEGC_CLIPS)
    parser.add_argument("--subjects", type=int, default=MEGC_SUBJECTS)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="epochs timed")
    parser.add_argument("--full_epochs", type=int, default=TrainConfig.epochs, help="epochs the time is scaled to")
    parser.add_argument("--size", type=int, default=28, help="input side")
    parser.add_argument("--folds_at_once", type=int, default=TrainConfig.folds_at_once)
    parser.add_argument("--no_profile", action="store_true", help="skip the operator table")
    parser.add_argument("--no_kernel", action="store_true", help="LOSO on PyTorch's kernels (TrainConfig.compiled off)")
    return parser


def main(args: argparse.Namespace) -> None:
    inputs, targets, groups = random_protocol(args.clips, args.subjects, args.size)
    config = TrainConfig(epochs=args.epochs, folds_at_once=args.folds_at_once, compiled=not args.no_kernel)
    folds = make_folds(groups, seed=config.seed)
    started = time.perf_counter()
    train_loso(inputs, targets, groups, num_classes=CLASSES, config=config, progress=True)
    seconds = time.perf_counter() - started
    scale = args.full_epochs / args.epochs
    samples = sum(len(fold.train) for fold in folds) * args.full_epochs
    flops = flops_per_sample(args.size, config.batch_size) * samples
    rate = matmul_gflops()
    compared = per_fold_epoch(inputs, targets, groups, config)
    full = {name: value * len(folds) * args.full_epochs for name, value in compared.items()}
    print(
        f"clips {args.clips}, folds {len(folds)}, epochs {args.epochs} (scaled to {args.full_epochs}), "
        f"batch {config.batch_size}, {torch.get_num_threads()} threads"
    )
    steps = "the compiled kernel" if config.compiled and kernel.stage_library() else "PyTorch's kernels"
    print(
        f"LOSO, at most {config.folds_at_once} folds at once, steps on {steps}: {seconds:.1f} s measured, "
        f"{seconds * scale:.0f} s at {args.full_epochs} epochs"
    )
    print(
        f"one epoch of {config.folds_at_once} folds on {torch.get_num_threads()} torch threads, s per fold-epoch "
        "(800-epoch total): "
        + ", ".join(f"{name} {value:.3f} ({full[name]:.0f} s)" for name, value in compared.items())
    )
    print(
        f"FLOP-bound: {flops / 1e12:.1f} TFLOP (forward + backward, {flops / samples / 1e6:.2f} MFLOP per sample) "
        f"at {rate:.0f} GFLOP/s (fp32 matmul) = {flops / rate / 1e9:.0f} s"
    )
    if kernel.stage_library() is not None:
        per_sample = step_seconds(args.size, config.batch_size)
        print(
            f"compiled fold step alone: {per_sample * 1e6:.1f} us per sample (forward + backward) = "
            f"{per_sample * samples:.0f} s on one thread for every sample of every fold's every epoch"
        )
    if not args.no_profile:
        print(heaviest_operators(inputs, targets, groups, config))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
