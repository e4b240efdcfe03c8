"""Learning check: does stage-1 training learn, in float32 and in mixed precision alike?

    python -m benchmarks.learning                      # CPU: small crops, a few minutes
    python -m benchmarks.learning --steps 300 --size 480 480 --batch 6 --iters 12   # CUDA: the seed recipe

It generates a synthetic FacialFlowNet copy, writes a fixed start (a seeded DecFlow in the
authors' format), trains stage 1 from it with `train.py` (the seed recipe's optimiser
flags) once in float32 and once with `--mixed_precision`, and scores both with
`evaluate.py` on the test split, next to zero flow and OpenCV DIS. Every run goes through
the real scripts, as a user would run them. `--seeds 1 2 3` repeats each training with
several seeds and adds each precision's mean and spread, to tell a difference between the
precisions from chance. On a CPU without native bfloat16, mixed
precision is float32 (one warning line) and its row is left out unless `--amp_dtype` asks
for a dtype explicitly.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from core.checkpoint import save_checkpoint
from core.cli import DocstringHelpFormatter
from core.inference import resolve_inference_precision
from core.network import DecFlow
from core.precision import AMP_DTYPES, amp_dtype_name
from core.synthetic import generate

REPO = Path(__file__).resolve().parents[1]
KINDS = ("facial", "head", "expression")
LABEL_WIDTH = 40  # first column of the table


def get_args_parser() -> argparse.ArgumentParser:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learning", description=__doc__,
                                     formatter_class=DocstringHelpFormatter,
                                     epilog=f"The defaults shown are this machine's ({'CUDA' if cuda else 'CPU'}): "
                                            "with CUDA they are the seed recipe's, on a CPU small and fast.")
    parser.add_argument("--device", default="cuda" if cuda else "cpu", help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--steps", type=int, default=300 if cuda else 40, help="training steps per run")
    parser.add_argument("--lr", type=float, default=0.000125 if cuda else 0.0004,
                        help="peak learning rate (higher on a CPU: few steps)")
    parser.add_argument("--size", type=int, nargs=2, default=[480, 480] if cuda else [128, 128], metavar=("H", "W"),
                        help="training crop")
    parser.add_argument("--batch", type=int, default=6 if cuda else 2, help="batch size")
    parser.add_argument("--iters", type=int, default=12 if cuda else 4, help="recurrent iterations in training")
    parser.add_argument("--eval_iters", type=int, default=12, help="iterations in evaluation")
    parser.add_argument("--subjects", type=int, default=5 if cuda else 2, help="synthetic subjects per split")
    parser.add_argument("--frames", type=int, default=6 if cuda else 4, help="frames per synthetic sequence")
    parser.add_argument("--frame_size", type=int, nargs=2, default=[512, 512] if cuda else [160, 160],
                        metavar=("H", "W"), help="synthetic frame size")
    parser.add_argument("--amp_dtype", choices=sorted(AMP_DTYPES), default=None,
                        help="dtype of the mixed-precision run (default: float16 on CUDA, bfloat16 on CPUs that "
                             "have it natively)")
    parser.add_argument("--num_workers", type=int, default=4 if cuda else 0,
                        help="data-loading processes per training run")
    parser.add_argument("--workdir", default=None, help="keep data, weights and logs here (default: a temp folder)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                        help="train each precision once per seed (train.py --seed: data order, augmentation) and "
                             "add each precision's mean and spread (max - min): how far apart two rows may lie "
                             "by chance (default: one run each with train.py's seed)")
    parser.add_argument("--parallel", action="store_true",
                        help="train the fp32 and mixed-precision runs at the same time (one GPU holds both; "
                             "their train times then overlap)")
    return parser


def _run(script: str, argv: list[str]) -> None:
    command = [sys.executable, str(REPO / script), *argv]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{script} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def skipped_steps(log: Path) -> str:
    """'k/n' from train.py's `done:` line when a GradScaler ran, else '-'."""
    found = re.findall(r"\((\d+) of (\d+) steps skipped by the GradScaler\)", log.read_text(encoding="utf-8"))
    return f"{found[-1][0]}/{found[-1][1]}" if found else "-"


def train_and_score(name: str, extra: list[str], *, args: argparse.Namespace, root: Path, start: Path,
                    work: Path) -> tuple[dict, float, str]:
    started = time.perf_counter()
    _run("train.py", ["--name", name, "--stage", "facialflow", "--output", str(work), "--root", str(root),
                      "--restore_ckpt", str(start), "--num_steps", str(args.steps), "--lr", str(args.lr),
                      "--image_size", *map(str, args.size), "--wdecay", "0.00001", "--gamma", "0.85",
                      "--batch_size", str(args.batch), "--iters", str(args.iters), "--val_freq", str(args.steps),
                      "--print_freq", str(max(1, args.steps // 10)), "--num_workers", str(args.num_workers),
                      "--device", args.device,
                      *extra])
    seconds = time.perf_counter() - started
    return (score(["--model", str(work / f"{name}.pth"), "--iters", str(args.eval_iters), "--device", args.device,
                   "--no-mixed_precision"], root, work / f"{name}.json"), seconds, skipped_steps(work / f"{name}.log"))


def score(argv: list[str], root: Path, output: Path) -> dict:
    _run("evaluate.py", [*argv, "--root", str(root), "--split", "test", "--no_progress", "--output_json", str(output)])
    return json.loads(output.read_text())


def main(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    amp_dtype = resolve_inference_precision(True, args.amp_dtype, device,
                                            warn=lambda line: print(line + "; no mixed-precision run", flush=True))
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.workdir or temporary)
        root = work / "FacialFlowNet"
        if not root.is_dir():
            generate(root, args.subjects, args.frames, tuple(args.frame_size), seed=0)
        start = work / "start.pth"
        torch.manual_seed(0)
        save_checkpoint(DecFlow(), start)  # the fixed start of both runs
        print(f"learning check on {device} (CPU capability {torch.backends.cpu.get_cpu_capability()}): "
              f"{args.steps} steps, lr {args.lr}, crop {args.size[0]}x{args.size[1]}, batch {args.batch}, "
              f"{args.iters} iterations; "
              f"evaluation {args.eval_iters} iterations on the test split", flush=True)
        rows = {"zero flow": (score(["--method", "zero"], root, work / "zero.json"), None, "-"),
                "DIS (OpenCV)": (score(["--method", "dis"], root, work / "dis.json"), None, "-")}
        precisions = {"DecFlow fp32": ("fp32", [])}
        if amp_dtype is not None:
            precisions[f"DecFlow {amp_dtype_name(amp_dtype)} autocast"] = (
                "amp", ["--mixed_precision", "--amp_dtype", amp_dtype_name(amp_dtype)])
        runs = {(label, seed): (name if seed is None else f"{name}_seed{seed}",
                                extra if seed is None else [*extra, "--seed", str(seed)])
                for label, (name, extra) in precisions.items() for seed in args.seeds or [None]}
        with ThreadPoolExecutor(max_workers=len(runs) if args.parallel else 1) as pool:
            futures = {key: pool.submit(train_and_score, name, extra, args=args, root=root, start=start, work=work)
                       for key, (name, extra) in runs.items()}
            trained = {key: future.result() for key, future in futures.items()}
    for label in precisions:
        if args.seeds is None:
            rows[label] = trained[label, None]
            continue
        documents = [trained[label, seed][0] for seed in args.seeds]
        rows.update({f"{label} seed {seed}": trained[label, seed] for seed in args.seeds})
        rows[f"{label} mean"] = (summarise(documents, statistics.fmean), None, "-")
        rows[f"{label} spread"] = (summarise(documents, lambda values: max(values) - min(values)), None, "-")
    print_table(rows)


def summarise(documents: list[dict], statistic) -> dict:
    """One evaluation document whose EPEs and facial <3px are `statistic` over `documents`."""
    summary = {kind: {"epe": statistic([d[kind]["epe"] for d in documents])} if documents[0][kind] else None
               for kind in KINDS}
    summary["facial"]["3px"] = statistic([d["facial"]["3px"] for d in documents])
    return summary


def print_table(rows: dict[str, tuple[dict, float | None, str]]) -> None:
    print(f"\n{'run':<{LABEL_WIDTH}}{'facial EPE':>11}{'head EPE':>10}{'expr. EPE':>10}{'facial <3px':>12}"
          f"{'train s':>9}{'skipped':>9}")
    for name, (document, seconds, skipped) in rows.items():
        epes = [document[k]["epe"] if document[k] else None for k in KINDS]
        cells = "".join(f"{e:>10.3f}" if e is not None else f"{'-':>10}" for e in epes)
        print(f"{name:<{LABEL_WIDTH}} {cells}{document['facial']['3px']:>12.3f}"
              f"{'-' if seconds is None else f'{seconds:.0f}':>9}{skipped:>9}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
