"""Learning check: does stage-1 training learn, in float32 and in mixed precision alike?

    python -m benchmarks.learning                      # CPU: 128x128 crops of 160x160 frames, about 10 minutes
    python -m benchmarks.learning --steps 300 --size 480 480 --batch 6 --iters 12   # CUDA: the seed recipe

It generates a synthetic FacialFlowNet copy (train and test splits), takes a fixed start (by
default a seeded DecFlow in the authors' format; `--start gma-sintel` is the seed recipe's
stage-1 start, fetched by name), trains stage 1 from it with `train.py` (the seed recipe's
optimiser flags) once in float32 and once with `--mixed_precision`, and scores both with
`evaluate.py` on the test split, next to zero flow and OpenCV DIS. Every run goes through the
real scripts, as a user would run them. From the random start, the CPU defaults do not learn
(they end at zero flow's EPE; see the README): a randomly initialised feature encoder does not
match, and the few hundred steps a CPU allows do not get it there.

Training and scoring see the same kind of data: crops close to the frame size, the same
recurrent iterations (`--eval_iters` defaults to `--iters`), and on the CPU frames rendered at
`--frame_interval 3`, so that the face moves about 5 px per frame at 160x160, as it does at the
GPU defaults' 512x512 (at interval 1 it would move about 1.6 px). During training, `train.py`
also validates on a few test pairs (`--val_points`, `--val_pairs`), and the check draws both
runs' curves from their logs into one PNG (`--curves`): the training batches' EPE (whole
crops) beside the test split's (face pixels), so that one can see the test split confirm
what the training curve shows. `--face_scale 2` draws faces that fill most of the frame and
`--train_subjects N` a larger train split (data levers; the defaults keep the generator's
output). `--seeds 1 2 3` repeats each training with
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
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from matplotlib.figure import Figure

from core.checkpoint import save_checkpoint
from core.cli import DocstringHelpFormatter, UserError, add_offline_argument, exit_on_error, resolve_weights
from core.inference import resolve_inference_precision
from core.network import DecFlow
from core.precision import AMP_DTYPES, amp_dtype_name
from core.synthetic import FACE_SCALE, generate
from core.weights import offline_requested

REPO = Path(__file__).resolve().parents[1]
KINDS = ("facial", "head", "expression")
CURVE_KINDS = ("facial", "head")  # drawn in the curves and compared with zero flow
RANDOM_START = "random"  # --start: a seeded DecFlow, written by the check
TARGET_RATIO = 0.7  # a run that learns ends at most this share of zero flow's EPE (issue 19)
DATA_SPLITS = ("train", "test")  # the check never uses a val split
LABEL_WIDTH = 40  # first column of the table
# train.py's log lines: "[   step, lr 0.0001] loss 1.2, facial_epe 0.3, ..." and
# "validation facialflow/test at step 50 (3 s): facial_epe 0.4, ..."
TRAIN_LINE = re.compile(r"\[\s*(\d+), lr [^\]]*\] (.*)")
VALIDATION_LINE = re.compile(r"validation facialflow/\w+ at step (\d+) \([^)]*\): (.*)")
METRIC = re.compile(r"(\w+) (-?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf))(?:,|$)")


def get_args_parser() -> argparse.ArgumentParser:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m benchmarks.learning",
        description=__doc__,
        formatter_class=DocstringHelpFormatter,
        epilog=f"The defaults shown are this machine's ({'CUDA' if cuda else 'CPU'}): "
        "with CUDA they are the seed recipe's, on a CPU small and fast.",
    )
    parser.add_argument("--device", default="cuda" if cuda else "cpu", help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--steps", type=int, default=300 if cuda else 100, help="training steps per run")
    parser.add_argument(
        "--lr",
        type=float,
        default=0.000125 if cuda else 0.0008,
        help="peak learning rate (CPU default higher: few steps)",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[480, 480] if cuda else [128, 128],
        metavar=("H", "W"),
        help="training crop",
    )
    parser.add_argument("--batch", type=int, default=6 if cuda else 2, help="batch size")
    parser.add_argument("--iters", type=int, default=12 if cuda else 4, help="recurrent iterations in training")
    parser.add_argument(
        "--eval_iters", type=int, default=None, help="iterations in evaluation and validation (default: --iters)"
    )
    parser.add_argument(
        "--subjects",
        type=int,
        default=5 if cuda else 12,
        help="synthetic subjects of the test split (and of the train split without --train_subjects)",
    )
    parser.add_argument(
        "--train_subjects",
        type=int,
        default=None,
        help="synthetic subjects of the train split (default: --subjects); more subjects, more "
        "faces to learn from: a few can be learnt by heart",
    )
    parser.add_argument("--frames", type=int, default=6 if cuda else 5, help="frames per synthetic sequence")
    parser.add_argument(
        "--frame_size",
        type=int,
        nargs=2,
        default=[512, 512] if cuda else [160, 160],
        metavar=("H", "W"),
        help="synthetic frame size",
    )
    parser.add_argument(
        "--amp_dtype",
        choices=sorted(AMP_DTYPES),
        default=None,
        help="dtype of the mixed-precision run (default: float16 on CUDA, bfloat16 on CPUs that have it natively)",
    )
    parser.add_argument(
        "--num_workers", type=int, default=4 if cuda else 0, help="data-loading processes per training run"
    )
    parser.add_argument("--workdir", default=None, help="keep data, weights and logs here (default: a temp folder)")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="train each precision once per seed (train.py --seed: data order, augmentation) and "
        "add each precision's mean and spread (max - min): how far apart two rows may lie "
        "by chance (default: one run each with train.py's seed)",
    )
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="train the fp32 and mixed-precision runs at the same time (one GPU holds both; "
        "their train times then overlap)",
    )
    parser.add_argument(
        "--frame_interval",
        type=float,
        default=1.0 if cuda else 3.0,
        metavar="T",
        help="motion time between synthetic frames (python -m core.synthetic --frame_interval): "
        "on the CPU 3, for the motion in pixels of 512x512 frames at 160x160",
    )
    parser.add_argument(
        "--face_scale",
        type=float,
        default=FACE_SCALE,
        metavar="S",
        help="face size in the synthetic frames (python -m core.synthetic --face_scale): 2 fills most "
        "of the frame with the face, so that the training loss (over whole crops) is about the face",
    )
    parser.add_argument(
        "--val_points",
        type=int,
        default=4,
        help="validations on the test split during each training run, the last at its end (0: none)",
    )
    parser.add_argument("--val_pairs", type=int, default=16, help="test pairs of each validation during training")
    parser.add_argument(
        "--start",
        default=RANDOM_START,
        metavar="random|PATH|NAME",
        help="weights both runs start from: 'random' (default: a seeded DecFlow, no download), a "
        "checkpoint file, or a registered name: gma-sintel is the seed recipe's stage-1 start "
        "(downloaded and verified when absent; python -m core.weights list)",
    )
    add_offline_argument(parser)
    parser.add_argument(
        "--curves",
        type=Path,
        default=Path("outputs", "learning_curves.png"),
        help="PNG of the training runs' curves (default: outputs/learning_curves.png)",
    )
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


def subjects_of(split: str, args: argparse.Namespace) -> int:
    """Synthetic subjects of `split`: `--train_subjects` (else `--subjects`) for train, `--subjects` otherwise."""
    return args.subjects if split != "train" or args.train_subjects is None else args.train_subjects


def evaluation_iters(args: argparse.Namespace) -> int:
    """Iterations of evaluation and validation: `--eval_iters`, else those of training."""
    return args.iters if args.eval_iters is None else args.eval_iters


def validation_flags(args: argparse.Namespace) -> list[str]:
    """train.py's flags for `--val_points` validations on `--val_pairs` test pairs (the last at the end)."""
    if args.val_points < 1:
        return ["--val_freq", str(args.steps)]
    return [
        "--validation",
        "facialflow",
        "--val_split",
        "test",
        "--val_freq",
        str(max(1, args.steps // args.val_points)),
        "--val_max_pairs",
        str(args.val_pairs),
        "--val_iters",
        str(evaluation_iters(args)),
    ]


def train_and_score(
    name: str, extra: list[str], *, args: argparse.Namespace, root: Path, start: Path, work: Path
) -> tuple[dict, float, str]:
    started = time.perf_counter()
    _run(
        "train.py",
        [
            "--name",
            name,
            "--stage",
            "facialflow",
            "--output",
            str(work),
            "--root",
            str(root),
            "--restore_ckpt",
            str(start),
            # a random start replaces the ImageNet semantic encoder: nothing to download for it
            *(["--offline"] if args.offline or args.start == RANDOM_START else []),
            "--num_steps",
            str(args.steps),
            "--lr",
            str(args.lr),
            "--image_size",
            *map(str, args.size),
            "--wdecay",
            "0.00001",
            "--gamma",
            "0.85",
            "--batch_size",
            str(args.batch),
            "--iters",
            str(args.iters),
            *validation_flags(args),
            "--print_freq",
            str(max(1, args.steps // 10)),
            "--num_workers",
            str(args.num_workers),
            "--device",
            args.device,
            *extra,
        ],
    )
    seconds = time.perf_counter() - started
    return (
        score(
            [
                "--model",
                str(work / f"{name}.pth"),
                "--iters",
                str(evaluation_iters(args)),
                "--device",
                args.device,
                "--no-mixed_precision",
            ],
            root,
            work / f"{name}_results.json",
        ),
        seconds,
        skipped_steps(work / f"{name}.log"),
    )


def starting_weights(spec: str, work: Path, *, offline: bool) -> Path:
    """The fixed start of both runs: with `RANDOM_START` a seeded DecFlow written to `work`, else
    the checkpoint file or registered name `spec` (fetched unless `offline`); train.py restores
    it as stage 1 does, non-strictly."""
    if spec == RANDOM_START:
        start = work / "start.pth"
        torch.manual_seed(0)
        save_checkpoint(DecFlow(), start)
        return start
    try:
        return Path(resolve_weights(spec, "--start", offline=offline)).resolve()  # train.py runs in the repo
    except UserError as error:
        raise SystemExit(str(error)) from None


def score(argv: list[str], root: Path, output: Path) -> dict:
    _run("evaluate.py", [*argv, "--root", str(root), "--split", "test", "--no_progress", "--output_json", str(output)])
    return json.loads(output.read_text())


def main(args: argparse.Namespace) -> None:
    began = time.perf_counter()
    device = torch.device(args.device)
    amp_dtype = resolve_inference_precision(
        True, args.amp_dtype, device, warn=lambda line: print(line + "; no mixed-precision run", flush=True)
    )
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.workdir or temporary)
        work.mkdir(parents=True, exist_ok=True)
        start = starting_weights(args.start, work, offline=offline_requested(args.offline))  # before the data
        root = work / "FacialFlowNet"
        if not root.is_dir():
            for split in DATA_SPLITS:
                generate(
                    root,
                    subjects_of(split, args),
                    args.frames,
                    tuple(args.frame_size),
                    seed=0,
                    splits=[split],
                    frame_interval=args.frame_interval,
                    face_scale=args.face_scale,
                )
        print(
            f"learning check on {device} (CPU capability {torch.backends.cpu.get_cpu_capability()}): "
            f"{args.steps} steps, lr {args.lr}, crop {args.size[0]}x{args.size[1]}, batch {args.batch}, "
            f"{args.iters} iterations; {subjects_of('train', args)} train and {args.subjects} test subjects x "
            f"{args.frames - 1} pairs at "
            f"{args.frame_size[0]}x{args.frame_size[1]}, frame interval {args.frame_interval:g}, "
            f"face scale {args.face_scale:g}; "
            f"evaluation {evaluation_iters(args)} iterations on the test split; start: {start}",
            flush=True,
        )
        rows = {
            "zero flow": (score(["--method", "zero"], root, work / "zero.json"), None, "-"),
            "DIS (OpenCV)": (score(["--method", "dis"], root, work / "dis.json"), None, "-"),
        }
        precisions = {"DecFlow fp32": ("fp32", [])}
        if amp_dtype is not None:
            precisions[f"DecFlow {amp_dtype_name(amp_dtype)} autocast"] = (
                "amp",
                ["--mixed_precision", "--amp_dtype", amp_dtype_name(amp_dtype)],
            )
        runs = {
            (label, seed): (
                name if seed is None else f"{name}_seed{seed}",
                extra if seed is None else [*extra, "--seed", str(seed)],
            )
            for label, (name, extra) in precisions.items()
            for seed in args.seeds or [None]
        }
        with ThreadPoolExecutor(max_workers=len(runs) if args.parallel else 1) as pool:
            futures = {
                key: pool.submit(train_and_score, name, extra, args=args, root=root, start=start, work=work)
                for key, (name, extra) in runs.items()
            }
            trained = {key: future.result() for key, future in futures.items()}
        curves = {
            f"{label}" + ("" if seed is None else f" seed {seed}"): read_curves(work / f"{name}.log")
            for (label, seed), (name, _) in runs.items()
        }
    for label in precisions:
        if args.seeds is None:
            rows[label] = trained[label, None]
            continue
        documents = [trained[label, seed][0] for seed in args.seeds]
        rows.update({f"{label} seed {seed}": trained[label, seed] for seed in args.seeds})
        rows[f"{label} mean"] = (summarise(documents, statistics.fmean), None, "-")
        rows[f"{label} spread"] = (summarise(documents, lambda values: max(values) - min(values)), None, "-")
    print_table(rows)
    zero = rows["zero flow"][0]
    plot_curves(curves, {kind: zero[kind]["epe"] for kind in CURVE_KINDS}, args.curves)
    print()
    for label, curve in curves.items():
        print(describe_curve(label, curve))
    for label in precisions:
        document = rows[label if args.seeds is None else f"{label} mean"][0]
        print(
            f"{label}: "
            + ", ".join(
                f"{kind} EPE {document[kind]['epe'] / zero[kind]['epe']:.2f}x zero flow's" for kind in CURVE_KINDS
            )
            + f" (a learning run: at most {TARGET_RATIO}x)"
        )
    print(f"training curves: {args.curves}; whole run {time.perf_counter() - began:.0f} s")


def summarise(documents: list[dict], statistic) -> dict:
    """One evaluation document whose EPEs and facial <3px are `statistic` over `documents`."""
    summary = {
        kind: {"epe": statistic([d[kind]["epe"] for d in documents])} if documents[0][kind] else None for kind in KINDS
    }
    summary["facial"]["3px"] = statistic([d["facial"]["3px"] for d in documents])
    return summary


def read_curves(log: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """`{"train": {metric: [(step, value), ...]}, "test": {...}}` from a train.py log: its print lines
    (means over the training batches since the last print) and its validation lines."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {"train": defaultdict(list), "test": defaultdict(list)}
    for line in log.read_text(encoding="utf-8").splitlines():
        for split, pattern in (("train", TRAIN_LINE), ("test", VALIDATION_LINE)):
            found = pattern.search(line)
            if found:
                for key, value in METRIC.findall(found.group(2)):
                    curves[split][key].append((int(found.group(1)), float(value)))
    return curves


def plot_curves(curves: dict[str, dict], zero_epe: dict[str, float], path: Path) -> None:
    """One panel per kind: each run's training-batch EPE (line) and test-split EPE (dashed, markers),
    zero flow's test EPE and the learning target (`TARGET_RATIO` of it)."""
    figure = Figure(figsize=(11, 4.2))
    for ax, kind in zip(figure.subplots(1, len(CURVE_KINDS)), CURVE_KINDS):
        for index, (label, curve) in enumerate(curves.items()):
            colour = f"C{index}"
            for split, style, what in (
                ("train", "-", "training batches (whole crops)"),
                ("test", "o--", "test split (face pixels)"),
            ):
                if curve[split].get(f"{kind}_epe"):
                    steps, values = zip(*curve[split][f"{kind}_epe"])
                    ax.plot(steps, values, style, color=colour, markersize=4, label=f"{label}: {what}")
        ax.axhline(zero_epe[kind], color="0.3", linestyle=":", label="zero flow, test split")
        ax.axhline(
            TARGET_RATIO * zero_epe[kind],
            color="0.6",
            linestyle="-.",
            label=f"{TARGET_RATIO}x zero flow (learning target)",
        )
        ax.set(xlabel="step", ylabel="EPE (px)", title=f"{kind} flow")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def describe_curve(label: str, curve: dict[str, dict]) -> str:
    """One line: first and last training-batch and test-split facial EPE of a run, with their steps."""
    parts = []
    for split, what in (("train", "training batches"), ("test", "test split")):
        points = curve[split].get("facial_epe")
        if points:
            (first_step, first), (last_step, last) = points[0], points[-1]
            parts.append(f"{what} {first:.2f} (step {first_step}) -> {last:.2f} (step {last_step})")
    return f"{label}: facial EPE, " + "; ".join(parts or ["no curve in the log"])


def print_table(rows: dict[str, tuple[dict, float | None, str]]) -> None:
    print(
        f"\n{'run':<{LABEL_WIDTH}}{'facial EPE':>11}{'head EPE':>10}{'expr. EPE':>10}{'facial <3px':>12}"
        f"{'train s':>9}{'skipped':>9}"
    )
    for name, (document, seconds, skipped) in rows.items():
        epes = [document[k]["epe"] if document[k] else None for k in KINDS]
        cells = "".join(f"{e:>10.3f}" if e is not None else f"{'-':>10}" for e in epes)
        print(
            f"{name:<{LABEL_WIDTH}} {cells}{document['facial']['3px']:>12.3f}"
            f"{'-' if seconds is None else f'{seconds:.0f}':>9}{skipped:>9}"
        )


if __name__ == "__main__":
    exit_on_error(lambda: main(get_args_parser().parse_args()))
