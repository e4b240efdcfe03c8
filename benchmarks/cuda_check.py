"""The whole GPU check in one device call, every log under one folder.

    python -m benchmarks.cuda_check                          # every part, into $OUT (else outputs/cuda_check)
    python -m benchmarks.cuda_check --parts learning,train_levers --out /tmp/check   # what did not fit
    python -m benchmarks.cuda_check --dry-run                # each part's tiny CPU stand-in (minutes)

Parts (`PARTS`), run one after another in this order of priority:
  suite         the complete test suite with CUDA present (pytest-xdist workers where installed,
                see requirements-dev.txt; else plain pytest)
  benchmark     python -m benchmarks.benchmark all --device cuda
  learning      python -m benchmarks.learning with its GPU defaults (--parallel)
  train_levers  python -m benchmarks.levers --device cuda (training-step levers at the seed recipe)
  corpus        python -m benchmarks.corpus --device cuda (get_flow --corpus: N processes on N GPUs
                give >= 0.9 N x one process's pairs/s; needs 2 GPUs, else shown for information)
  export        python -m benchmarks.export --device cuda (the ONNX export in onnxruntime against eager)

Each part is a process group with its own time budget, killed when the budget or the whole
run's `--budget` runs out, so that a part that overruns costs only its own result; a part
with less than MIN_START_S left is not started. PART.log holds each part's output as it
comes, suite.xml the suite's JUnit report; summary.txt (and summary.json) give each
part's status, seconds and the end of its log, and the command that runs the parts left over.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MIN_START_S = 30  # a part with less time than this left is not started
TAIL_LINES = 40  # lines of each part's log repeated in the summary


@dataclass(frozen=True)
class Part:
    """One step of the check: its command on the GPU, its tiny CPU stand-in, its time budget."""

    command: tuple[str, ...]
    dry_run: tuple[str, ...]
    budget_s: int


PYTHON = sys.executable
# Budgets: measured on one H200 (suite from its two partial runs) plus headroom; they add
# up to more than the default --budget, so a run that takes long leaves the last parts over.
PARTS = {
    "suite": Part(
        (PYTHON, "-m", "pytest", "-q", "--durations=25"),
        (PYTHON, "-m", "pytest", "-q", "tests/test_padder.py"),
        budget_s=300,
    ),
    "benchmark": Part(
        (PYTHON, "-m", "benchmarks.benchmark", "all", "--device", "cuda"),
        (
            PYTHON,
            "-m",
            "benchmarks.benchmark",
            "inference",
            "--size",
            "128",
            "128",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--repeats",
            "1",
        ),
        budget_s=180,
    ),
    # both precisions train at once (one GPU holds both): the part takes about half the time
    "learning": Part(
        (PYTHON, "-m", "benchmarks.learning", "--device", "cuda", "--parallel"),
        (
            PYTHON,
            "-m",
            "benchmarks.learning",
            "--device",
            "cpu",
            "--steps",
            "1",
            "--size",
            "128",
            "128",
            "--batch",
            "1",
            "--iters",
            "1",
            "--eval_iters",
            "1",
            "--subjects",
            "1",
            "--frames",
            "3",
            "--frame_size",
            "128",
            "128",
            "--num_workers",
            "0",
        ),
        budget_s=360,
    ),
    "train_levers": Part(
        (PYTHON, "-m", "benchmarks.levers", "--device", "cuda"),
        (
            PYTHON,
            "-m",
            "benchmarks.levers",
            "--levers",
            "fast",
            "foreach-adamw",
            "--iters",
            "1",
            "--warmup",
            "1",
            "--repeats",
            "1",
        ),
        budget_s=240,
    ),
    "corpus": Part(
        (PYTHON, "-m", "benchmarks.corpus", "--device", "cuda"),
        (PYTHON, "-m", "benchmarks.corpus", "--device", "cpu", "--sequences", "2", "--frames", "2", "--iters", "1"),
        budget_s=150,
    ),
    # the ONNX export through onnxruntime's CUDA provider (onnxruntime-gpu) against eager float16;
    # most of the time is the export itself (traced on the CPU)
    "export": Part(
        (PYTHON, "-m", "benchmarks.export", "--device", "cuda", "--parity_size", "480", "480"),
        (
            PYTHON,
            "-m",
            "benchmarks.export",
            "--iters",
            "1",
            "--size",
            "128",
            "128",
            "--parity_size",
            "128",
            "128",
            "--warmup",
            "0",
            "--repeats",
            "1",
        ),
        budget_s=300,
    ),
}


def suite_arguments(workers: int, xdist: bool) -> tuple[list[str], dict[str, str]]:
    """Extra pytest arguments and environment for `workers` parallel processes (pytest-xdist;
    none without it or for `workers` < 2), each with its share of the CPU threads."""
    if not xdist or workers < 2:
        return [], {}
    threads = max(1, (os.cpu_count() or 1) // workers)
    return ["-n", str(workers)], {"OMP_NUM_THREADS": str(threads)}


def run_part(name: str, command: list[str], log: Path, timeout_s: float, env: dict[str, str]) -> dict:
    """Run `command` in its own process group, output to `log`; the whole group is killed
    after `timeout_s`. Returns the part's record for the summary."""
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as stream:
        stream.write(f"$ {' '.join(command)}\n")
        stream.flush()
        process = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=stream,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=timeout_s)
            status = "passed" if returncode == 0 else f"failed (exit {returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            status = f"timed out after {timeout_s:.0f} s"
    return {
        "part": name,
        "status": status,
        "seconds": round(time.perf_counter() - started, 1),
        "budget_s": round(timeout_s),
        "log": log.name,
    }


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def describe_machine() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
    return (
        f"commit {commit.stdout.strip() or 'unknown'}, torch {torch.__version__}, {device}, "
        f"{os.cpu_count()} CPUs, CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )


def write_summary(out: Path, header: str, records: list[dict], left_over: list[str], dry_run: bool) -> str:
    lines = [f"cuda_check{' --dry-run' if dry_run else ''}: {header}", ""]
    lines += [
        f"{r['part']:<14}{r['status']:<28}{r['seconds']:>8.0f} s of {r['budget_s']} s   {r['log']}" for r in records
    ]
    if left_over:
        lines += [
            "",
            f"not run (out of time): {', '.join(left_over)}; run them with",
            f"  python -m benchmarks.cuda_check --parts {','.join(left_over)}",
        ]
    for record in records:
        lines += ["", f"===== {record['part']}: last lines of {record['log']}", tail(out / record["log"])]
    text = "\n".join(lines) + "\n"
    (out / "summary.txt").write_text(text, encoding="utf-8")
    (out / "summary.json").write_text(
        json.dumps({"machine": header, "parts": records, "not_run": left_over}, indent=1), encoding="utf-8"
    )
    return text


def parse_parts(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PARTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"--parts: unknown {', '.join(unknown) or '(none given)'}; choose from {','.join(PARTS)}"
        )
    return [name for name in PARTS if name in names]  # always in order of priority


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts",
        type=parse_parts,
        default=list(PARTS),
        help=f"comma-separated parts to run, always in the order {','.join(PARTS)} (default: all)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or REPO / "outputs" / "cuda_check"),
        help="folder of the logs and the summary (default: $OUT if set, else outputs/cuda_check)",
    )
    parser.add_argument("--budget", type=float, default=480, help="seconds for all parts together")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, max(1, (os.cpu_count() or 1) // 2)),
        help="pytest-xdist workers of the suite (used where pytest-xdist is installed; <2: one process)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print each part's GPU command, then run its tiny CPU stand-in instead"
    )
    return parser


def main(args: argparse.Namespace) -> list[dict]:
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("cuda_check: CUDA is not available on this machine (--dry-run runs the CPU stand-ins)")
    if args.budget <= 0:
        raise SystemExit(f"--budget must be positive, got {args.budget}")
    args.out.mkdir(parents=True, exist_ok=True)
    header = describe_machine()
    print(f"cuda_check: {header}; logs in {args.out}", flush=True)
    deadline = time.perf_counter() + args.budget
    records, left_over = [], []
    for name in args.parts:
        part = PARTS[name]
        extra, env = [], {}
        if name == "suite":
            extra, env = suite_arguments(args.workers, importlib.util.find_spec("xdist") is not None)
            extra.append(f"--junitxml={args.out / 'suite.xml'}")
        command = [*(part.dry_run if args.dry_run else part.command), *extra]
        if args.dry_run:
            print(f"{name}: on the GPU `{' '.join([*part.command, *extra])}`", flush=True)
        remaining = deadline - time.perf_counter()
        if remaining < MIN_START_S:
            left_over.append(name)
            continue
        budget = remaining if args.dry_run else min(part.budget_s, remaining)  # CPU stand-ins: the whole budget
        print(f"{name}: `{' '.join(command)}` (at most {budget:.0f} s)", flush=True)
        records.append(run_part(name, command, args.out / f"{name}.log", budget, env))
        print(f"{name}: {records[-1]['status']} in {records[-1]['seconds']:.0f} s", flush=True)
    print("\n" + write_summary(args.out, header, records, left_over, args.dry_run), flush=True)
    return records


if __name__ == "__main__":
    # exit 1 when a part failed or timed out (parts left over for lack of time are no failure)
    sys.exit(any(record["status"] != "passed" for record in main(get_args_parser().parse_args())))
