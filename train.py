"""Train DecFlow on FacialFlowNet: the paper's two-stage recipe.

Stage 1 starts from the GMA checkpoint (`--restore_ckpt checkpoints/gma-sintel.pth`)
and trains fnet, cnet, att, both decoders and change_dim. Stage 2 (`--frozen`) restores
the stage-1 weights and trains only the head decoder and change_dim. See `--help` and
the README for the exact commands.

Runs on one CPU, one GPU, several GPUs with `--gpus 0 1 ...` (nn.DataParallel, as the
reference) or several processes under `torchrun` (DistributedDataParallel; gloo on CPU,
NCCL on GPUs). Weight files are in the authors' format whatever the wrapper.

Outputs in `--output`: `{step}_{name}.pth` every `--val_freq` steps, `{name}.pth` at the
end, the training state `{name}_state.pth` (for `--resume`), the log `{name}.log`, loss
and EPE curves `{name}_loss.png` / `{name}_epe.png` and TensorBoard logs in
`runs/{name}`. A run name is one file name (no folders: `--output` chooses the folder), and
no output may be one of the run's inputs (`--restore_ckpt`, `--semantic_weights`).
Problems with the inputs or the data stop the run with one line, `error: ...`, naming the
file (from the command line: exit code 2). The arguments, `--root` and its splits, `--output`
and `--name` are checked before a model, a download or a file of the run exists, and the log's
files appear only once the run has started: a start that fails leaves no file behind.

This script parses and checks the arguments (check_args), makes them a typed TrainConfig
(config_from_args) and calls core.training.loop.train, which reads as the run happens:
resolve_inputs (core.training.inputs: data, resumed state, weights), setup_run
(core.training.run: log, device, model, restore, wrap, optimiser), train_loop
(core.training.loop: the steps, saves, validation, stops) and finish_run.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from core.cli import (
    AtLeastOne,
    FileInTheWay,
    HelpFormatter,
    OneLineErrorParser,
    UserError,
    add_batch_size_argument,
    add_device_argument,
    add_model_arguments,
    add_offline_argument,
    check_none_is_an_input,
    check_output,
    exit_on_error,
    model_config,
)
from core.defaults import CHECKPOINTS_README, DATASET_ROOT, ITERS, TRAIN_IMAGE_SIZE, VAL_ITERS
from core.training.config import RESUME_AUTO, RESUME_THIS_RUN, TrainConfig, run_outputs, state_file
from core.training.log import TrainingStopped
from core.training.loop import train
from core.utils.padder import image_size_problem
from core.weights import registered_entry, registered_names


# ============================================================================ arguments
def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        allow_abbrev=False,
        prog="train.py",
        description="Train DecFlow (FacialFlowNet, ACM MM 2024). Defaults follow the paper's recipe; "
        "stage 1 restores the GMA checkpoint, stage 2 adds --frozen and restores stage 1.",
        formatter_class=HelpFormatter,
        add_help=add_help,
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--name",
        default="decflow",
        help="run name: output files are {name}.pth, {step}_{name}.pth, {name}_state.pth, {name}.log, runs/{name}",
    )
    run.add_argument("--stage", default="facialflow", choices=["facialflow"], help="training data")
    run.add_argument(
        "--validation",
        nargs="*",
        default=[],
        choices=["facialflow"],
        help="validate on these datasets every --val_freq steps (omit to skip validation)",
    )
    run.add_argument("--output", default="checkpoints", help="folder for weights, state, log, curves, runs/")
    run.add_argument(
        "--restore_ckpt",
        default=None,
        help="initial weights: the GMA checkpoint for stage 1 (loaded non-strictly, the head decoder, "
        "semantic encoder and fusion start fresh), the stage-1 weights for stage 2 (strict); a file "
        "or a registered name (python -m core.weights list); a registered file that is absent, "
        "e.g. checkpoints/gma-sintel.pth, is downloaded and verified",
    )
    add_offline_argument(run)
    run.add_argument(
        "--resume",
        nargs="?",
        const=RESUME_THIS_RUN,
        default=None,
        metavar="STATE",
        help="continue this run, {output}/{name}_state.pth (an error when it does not exist); "
        f"--resume STATE: from that training-state file; --resume {RESUME_AUTO}: continue when there is a "
        "state file, else start fresh (preemptible jobs)",
    )
    run.add_argument("--seed", type=int, default=1234, help="seed of torch, numpy, random and the data order")
    add_device_argument(
        run,
        help="cpu, cuda or cuda:N (default: cuda if available, else cpu; torchrun: cuda:LOCAL_RANK)",
    )
    run.add_argument(
        "--gpus",
        type=int,
        nargs="+",
        default=None,
        help="GPU ids; several ids wrap the model in nn.DataParallel as the reference "
        "(default 0; ignored, with a warning, on CPU and under torchrun)",
    )
    run.add_argument(
        "--stop_at",
        type=int,
        default=None,
        metavar="STEP",
        help="stop after this step, saving the training state as on Ctrl-C (split a run into time "
        "slots; continue with --resume)",
    )

    data_group = parser.add_argument_group("data")
    data_group.add_argument("--root", default=DATASET_ROOT, help="FacialFlowNet dataset folder")
    data_group.add_argument(
        "--image_size",
        type=int,
        nargs=2,
        default=list(TRAIN_IMAGE_SIZE),
        metavar=("H", "W"),
        help="training crop (multiples of 8, >= 128)",
    )
    add_batch_size_argument(
        data_group,
        default=6,
        help="total batch per step (split over DataParallel GPUs or torchrun processes)",
    )
    data_group.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="data-loading processes per training process (default min(cpus, 8))",
    )
    data_group.add_argument(
        "--add_noise",
        action="store_true",
        help="add Gaussian noise (std uniform in [0, 5]) to the images, as the reference option",
    )

    optim_group = parser.add_argument_group("optimisation")
    optim_group.add_argument("--num_steps", action=AtLeastOne, default=10000, help="optimizer steps of this stage")
    optim_group.add_argument("--lr", type=float, default=0.000125, help="peak learning rate of OneCycleLR")
    optim_group.add_argument("--wdecay", type=float, default=0.00001, help="AdamW weight decay")
    optim_group.add_argument("--epsilon", type=float, default=1e-8, help="AdamW epsilon")
    optim_group.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (after unscaling)")
    optim_group.add_argument("--gamma", type=float, default=0.85, help="sequence-loss weight decay over iterations")
    optim_group.add_argument("--iters", action=AtLeastOne, default=ITERS, help="recurrent iterations in training")
    optim_group.add_argument(
        "--max_nonfinite",
        action=AtLeastOne,
        default=5,
        help="abort after this many consecutive steps with a non-finite loss or gradient (such steps are skipped)",
    )

    model_group = parser.add_argument_group("model")
    model_group.add_argument(
        "--frozen", action="store_true", help="stage 2: train only update_block_head and change_dim"
    )
    model_group.add_argument(
        "--freeze_bn",
        action="store_true",
        help="keep every BatchNorm in eval mode (frozen running statistics); the reference updates them",
    )
    model_group.add_argument(
        "--semantic_weights",
        default=None,
        metavar="FILE",
        help="ImageNet ResNet-50 weights (torchvision or pytorchcv naming) for the frozen "
        "semantic encoder in stage 1 (default: torchvision's file in torch.hub's cache, downloaded "
        "when absent; with --offline and none there it stays random, said in the log and the weights' .json)",
    )
    add_model_arguments(model_group, training=True)  # architecture and precision, as evaluate.py and get_flow.py

    log_group = parser.add_argument_group("validation and logging")
    log_group.add_argument(
        "--val_freq",
        action=AtLeastOne,
        default=1000,
        help="save {step}_{name}.pth and the training state, and validate, every N steps",
    )
    log_group.add_argument(
        "--print_freq",
        action=AtLeastOne,
        default=100,
        help="log averaged training metrics (log file, TensorBoard, curves) every N steps",
    )
    log_group.add_argument(
        "--vis_freq",
        type=int,
        default=None,
        help="TensorBoard flow images every N steps (default: --val_freq; 0 = never)",
    )
    log_group.add_argument(
        "--val_split",
        default="test",
        choices=["train", "val", "test"],
        help="split used by --validation facialflow (the reference uses test)",
    )
    log_group.add_argument(
        "--val_iters", action=AtLeastOne, default=VAL_ITERS, help="recurrent iterations in validation"
    )
    log_group.add_argument(
        "--val_max_pairs", type=int, default=None, help="validate on at most N evenly spaced pairs (default: all)"
    )
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject inconsistent arguments with parser.error (one line, exit code 2, no usage block)."""
    if problem := image_size_problem(*args.image_size):
        parser.error(f"--image_size: {problem}, got {args.image_size}")
    for name in ("lr", "clip", "epsilon"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            parser.error(f"--{name} must be a positive number, got {getattr(args, name)}")
    if not (math.isfinite(args.wdecay) and args.wdecay >= 0):
        parser.error(f"--wdecay must be a number >= 0, got {args.wdecay}")
    if not (math.isfinite(args.gamma) and 0 < args.gamma <= 1):
        parser.error(f"--gamma must be in (0, 1], got {args.gamma}")
    if not args.name or args.name in (".", "..") or os.sep in args.name or "/" in args.name:
        parser.error(f"--name {args.name!r} must be a file name without folders (--output chooses the folder)")
    if (
        args.restore_ckpt is not None
        and not Path(args.restore_ckpt).is_file()
        and registered_entry(args.restore_ckpt) is None
    ):
        parser.error(
            f"--restore_ckpt: file not found: {args.restore_ckpt}, nor a registered name "
            f"({registered_names()}; {CHECKPOINTS_README} says where the GMA and DecFlow weights come from)"
        )
    if args.semantic_weights is not None and not Path(args.semantic_weights).is_file():
        parser.error(f"--semantic_weights: file not found: {args.semantic_weights}")
    if args.resume == RESUME_THIS_RUN and not this_run_state(args).is_file():
        parser.error(
            f"--resume: nothing to continue, no training state {this_run_state(args)} (check --name and "
            f"--output; --resume {RESUME_AUTO} starts fresh when there is none)"
        )
    if args.resume not in (None, RESUME_THIS_RUN, RESUME_AUTO) and not Path(args.resume).is_file():
        parser.error(f"--resume: training-state file not found: {args.resume}")
    if args.vis_freq is not None and args.vis_freq < 0:
        parser.error("--vis_freq must be >= 0")
    if args.stop_at is not None and args.stop_at < 1:
        parser.error("--stop_at must be >= 1")
    if args.num_workers is not None and args.num_workers < 0:
        parser.error("--num_workers must be >= 0")
    try:
        model_config(args)
    except UserError as error:
        parser.error(str(error))
    check_outputs(parser, args)


def check_outputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`--output` must be a folder that can be made, and no file of the run one of its inputs."""
    try:
        output = check_output(args.output, "--output", folder=True)
        inputs = [("--restore_ckpt", args.restore_ckpt), ("--semantic_weights", args.semantic_weights)]
        if (
            args.resume not in (None, RESUME_THIS_RUN, RESUME_AUTO)
            and Path(args.resume).resolve() != this_run_state(args).resolve()
        ):
            inputs.append(("--resume", args.resume))
        outputs = run_outputs(
            output,
            name=args.name,
            val_freq=args.val_freq,
            num_steps=args.num_steps,
            inputs=[given for _, given in inputs if given is not None],
        )
        check_none_is_an_input(outputs, "--output/--name:", inputs)
    except FileInTheWay as error:
        parser.error(f"{error} (a file is in the way of the output folder)")
    except UserError as error:
        parser.error(str(error))


def this_run_state(args: argparse.Namespace) -> Path:
    """The training-state file of the run `--output`/`--name`: what a bare `--resume` continues."""
    return state_file(Path(args.output), args.name)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The checked options as the run's TrainConfig (lists as tuples); TypeError for an option it lacks."""
    return TrainConfig(**{key: tuple(value) if isinstance(value, list) else value for key, value in vars(args).items()})


# ============================================================================ the run
def main(args: argparse.Namespace) -> dict[str, float]:
    """Train; returns the last averaged training metrics (and validation metrics if any)."""
    check_args(get_args_parser(), args)
    try:
        return train(config_from_args(args))
    except (UserError, TrainingStopped) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    exit_on_error(lambda: main(get_args_parser().parse_args()))
