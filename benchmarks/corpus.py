"""Corpus throughput of `get_flow.py --corpus`: processes against threads, and processes on GPUs.

    python -m benchmarks.corpus                    # CPU: 2 processes x 1 thread vs 1 process x 2 threads
    python -m benchmarks.corpus --device cuda      # 1 process vs N = every GPU (torchrun), the 0.9 N check

Each mode runs get_flow.py on the same synthetic corpus (`--sequences` folders of `--frames`
random frames, `--size`), into a fresh output folder, with a seeded random DecFlow (throughput
does not depend on the weights; `--model` takes a real one). `loop s` is the corpus loop of the
slowest process as its summary line gives it (the model loaded), `wall s` the whole command
(Python, torch and the model starting up included); pairs/s are over all processes.

On CUDA the check is that N processes (torchrun, one per GPU) give at least 0.9 N times one
process's pairs per second; it needs 2 GPUs or more, and on one GPU two `--shard` processes
sharing it are shown for information. The exit status is 1 when the check fails.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.benchmark import format_table
from core.checkpoint import save_checkpoint
from core.network import DecFlow

REPO = Path(__file__).resolve().parents[1]
SCALING = 0.9  # N processes on N GPUs must give at least this times N times one process's pairs/s
SUMMARY = re.compile(r"(\d+) done, \d+ skipped, (\d+) failed of \d+ sequences in ([\d.]+) s \((\d+) pairs")


def make_corpus(root: Path, sequences: int, frames: int, size: tuple[int, int]) -> int:
    """`sequences` folders of `frames` random frames; returns the number of pairs."""
    rng = np.random.default_rng(0)
    for index in range(sequences):
        folder = root / f"seq{index:03d}"
        folder.mkdir(parents=True)
        for frame in range(frames):
            cv2.imwrite(str(folder / f"{frame:04d}.png"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return sequences * (frames - 1)


def launch(command: list[str], threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_mode(name: str, commands: list[list[str]], threads: int, pairs: int) -> dict:
    """Start `commands` at once (each with `threads` threads), wait for all; the row of the table."""
    started = time.perf_counter()
    processes = [launch(command, threads) for command in commands]
    outputs = [process.communicate() for process in processes]
    wall = time.perf_counter() - started
    loops, done = [], 0
    for process, (out, err) in zip(processes, outputs):
        found = SUMMARY.search(out)
        if process.returncode != 0 or found is None:
            raise SystemExit(f"benchmarks.corpus: {name} failed (exit {process.returncode}): {err.strip()[-500:]}")
        loops.append(float(found.group(3)))
        done += int(found.group(4))
    if done != pairs:
        raise SystemExit(f"benchmarks.corpus: {name} computed {done} pairs, the corpus has {pairs}")
    loop = max(loops)
    return {"mode": name, "wall s": wall, "loop s": loop, "pairs/s loop": pairs / loop, "pairs/s wall": pairs / wall}


class Commands:
    """get_flow.py on the benchmark's corpus, each mode into its own output folder."""

    def __init__(self, args: argparse.Namespace, root: Path, checkpoint: Path) -> None:
        self.root = root
        self.options = ["--corpus", str(root / "corpus"), "--model", str(checkpoint), "--iters", str(args.iters)]
        self.options += ["--device", args.device]

    def __call__(self, output: str, *extra: str, launcher: tuple[str, ...] = (sys.executable,)) -> list[str]:
        return [*launcher, "get_flow.py", *self.options, "--output", str(self.root / output), *extra]


def cpu_modes(commands: Commands, pairs: int) -> list[dict]:
    one = run_mode("1 process x 2 threads", [commands("threads")], 2, pairs)
    shards = [commands("processes", "--shard", f"{i}/2") for i in range(2)]
    return [one, run_mode("2 processes x 1 thread", shards, 1, pairs)]


def cuda_modes(commands: Commands, pairs: int) -> tuple[list[dict], bool | None]:
    """One process, then N = every GPU under torchrun; (rows, the 0.9 N check: None without 2 GPUs)."""
    gpus = torch.cuda.device_count()
    threads = max(1, (os.cpu_count() or 1) // max(2, gpus))
    rows = [run_mode("1 process", [commands("one")], threads, pairs)]
    if gpus < 2:
        shards = [commands("shared", "--shard", f"{i}/2") for i in range(2)]
        rows.append(run_mode("2 processes, 1 GPU (information)", shards, threads, pairs))
        return rows, None
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}")
    rows.append(run_mode(f"{gpus} processes (torchrun)", [commands("n", launcher=torchrun)], threads, pairs))
    return rows, rows[1]["pairs/s loop"] >= SCALING * gpus * rows[0]["pairs/s loop"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m benchmarks.corpus",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where get_flow.py runs (default cpu)")
    parser.add_argument("--sequences", type=int, default=None, help="sequences (default: 4 on CPU, 32 on CUDA)")
    parser.add_argument("--frames", type=int, default=None, help="frames per sequence (default: 5 on CPU, 25 on CUDA)")
    parser.add_argument(
        "--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="frame size (128 128 CPU, 480 480 CUDA)"
    )
    parser.add_argument("--iters", type=int, default=None, help="refinement iterations (default: 4 on CPU, 24 on CUDA)")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: a seeded random DecFlow)")
    return parser


def main(args: argparse.Namespace) -> int:
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("benchmarks.corpus: --device cuda, but CUDA is not available here")
    sequences = args.sequences or (32 if cuda else 4)
    frames = args.frames or (25 if cuda else 5)
    size = tuple(args.size or ((480, 480) if cuda else (128, 128)))
    args.iters = args.iters or (24 if cuda else 4)
    with tempfile.TemporaryDirectory(prefix="decflow-corpus-") as folder:
        root = Path(folder)
        pairs = make_corpus(root / "corpus", sequences, frames, size)
        checkpoint = args.model
        if checkpoint is None:
            torch.manual_seed(0)
            checkpoint = root / "seeded.pth"
            save_checkpoint(DecFlow(), checkpoint)
        commands = Commands(args, root, checkpoint)
        rows, check = cuda_modes(commands, pairs) if cuda else (cpu_modes(commands, pairs), None)
    device = torch.cuda.get_device_name() if cuda else f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    title = (
        f"corpus throughput: {sequences} sequences x {frames} frames ({pairs} pairs), {size[0]}x{size[1]}, "
        f"--iters {args.iters}, {args.device} ({device}, {os.cpu_count()} CPUs)"
    )
    print(format_table(title, rows), flush=True)
    if check is not None:
        ratio = rows[1]["pairs/s loop"] / rows[0]["pairs/s loop"]
        gpus = torch.cuda.device_count()
        print(
            f"{gpus} processes give {ratio:.2f}x one process's pairs/s (check: >= {SCALING * gpus:.2f}x): "
            f"{'passed' if check else 'FAILED'}"
        )
    elif cuda:
        print("the 0.9 N check needs 2 GPUs or more: not run")
    return 0 if check is not False else 1


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
