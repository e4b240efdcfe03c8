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

`main` reads as the run happens: check_args, resolve_inputs (data, resumed state, weights),
setup_run (log, device, model, restore, wrap, optimiser), train_loop (the steps, saves,
validation, stops) and finish_run.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils import data
from tqdm import tqdm

from core.checkpoint import (
    RANDOM_INITIALISATION,
    SEMANTIC_SOURCE,
    link_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    strip_data_parallel_prefix,
)
from core.cli import (
    FileInTheWay,
    HelpFormatter,
    OneLineErrorParser,
    UserError,
    WeightsNotFetched,
    add_model_arguments,
    add_offline_argument,
    check_none_is_an_input,
    check_output,
    exit_on_error,
    model_config,
    resolve_weights,
)
from core.datasets import FacialFlow, default_num_workers, split_problem
from core.defaults import CHECKPOINTS_README, DATASET_ROOT, ITERS, TRAIN_IMAGE_SIZE, VAL_ITERS
from core.network import DecFlow, DecFlowConfig
from core.precision import needs_grad_scaler, parse_amp_dtype, precision_name, resolve_amp_dtype
from core.training.data import SampleError, build_train_loader, sample_seed, upscaling_note
from core.training.distributed import (
    any_across_ranks,
    average_across_ranks,
    choose_device,
    setup_distributed,
    wrap_model,
)
from core.training.log import PrintWindow, RunLog, TrainingStopped, report_window
from core.training.stages import initialise, set_trainable
from core.training.state import StopRequest, plain_arguments, read_state, save_state, seed_everything, set_rng_state
from core.training.step import StepResult, build_optimizer, set_bn_eval, train_step
from core.training.validation import validate
from core.utils.padder import image_size_problem
from core.utils.progress import progress_bar
from core.weights import (
    REGISTRY,
    SEMANTIC,
    WeightsUnavailable,
    ensure,
    offline_requested,
    registered_entry,
    registered_names,
)

STATE_SUFFIX = "_state.pth"
# `--resume` alone: continue {output}/{name}_state.pth, which must exist.
RESUME_THIS_RUN = "this-run"
# `--resume auto` (job scripts): continue {output}/{name}_state.pth if it exists, else start fresh.
RESUME_AUTO = "auto"
# Training-state entries that must match for a resumed run to continue the same run.
RESUME_MUST_MATCH = (
    "num_steps",
    "batch_size",
    "frozen",
    "lr",
    *(f.name for f in fields(DecFlowConfig)),
    "stage",
    "image_size",
    "seed",
    "iters",
    "gamma",
    "wdecay",
    "clip",
    "epsilon",
    "mixed_precision",
    "amp_dtype",
    "add_noise",
    "freeze_bn",
)


# ============================================================================ arguments
def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        allow_abbrev=False,
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
    run.add_argument(
        "--device",
        default=None,
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
    data_group.add_argument(
        "--batch_size",
        type=int,
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
    optim_group.add_argument("--num_steps", type=int, default=10000, help="optimizer steps of this stage")
    optim_group.add_argument("--lr", type=float, default=0.000125, help="peak learning rate of OneCycleLR")
    optim_group.add_argument("--wdecay", type=float, default=0.00001, help="AdamW weight decay")
    optim_group.add_argument("--epsilon", type=float, default=1e-8, help="AdamW epsilon")
    optim_group.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (after unscaling)")
    optim_group.add_argument("--gamma", type=float, default=0.85, help="sequence-loss weight decay over iterations")
    optim_group.add_argument("--iters", type=int, default=ITERS, help="recurrent iterations in training")
    optim_group.add_argument(
        "--max_nonfinite",
        type=int,
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
        type=int,
        default=1000,
        help="save {step}_{name}.pth and the training state, and validate, every N steps",
    )
    log_group.add_argument(
        "--print_freq",
        type=int,
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
    log_group.add_argument("--val_iters", type=int, default=VAL_ITERS, help="recurrent iterations in validation")
    log_group.add_argument(
        "--val_max_pairs", type=int, default=None, help="validate on at most N evenly spaced pairs (default: all)"
    )
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject inconsistent arguments with parser.error (one line, exit code 2, no usage block)."""
    for name in ("num_steps", "batch_size", "val_freq", "print_freq", "iters", "val_iters", "max_nonfinite"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
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
        outputs = run_outputs(output, args, [given for _, given in inputs if given is not None])
        check_none_is_an_input(outputs, "--output/--name:", inputs)
    except FileInTheWay as error:
        parser.error(f"{error} (a file is in the way of the output folder)")
    except UserError as error:
        parser.error(str(error))


def this_run_state(args: argparse.Namespace) -> Path:
    """The training-state file of the run `--output`/`--name`: what a bare `--resume` continues."""
    return Path(args.output) / f"{args.name}{STATE_SUFFIX}"


def run_outputs(output: Path, args: argparse.Namespace, inputs: list[str]) -> list[Path]:
    """The files of the run in `output` (the `{step}_{name}` weights: those named like an input)."""
    names = [f"{args.name}{suffix}" for suffix in (".pth", ".json", STATE_SUFFIX, ".log", "_loss.png", "_epe.png")]
    step_file = re.compile(rf"(\d+)_{re.escape(args.name)}\.(pth|json)")
    for given in inputs:
        match = step_file.fullmatch(Path(given).name)
        if match and int(match[1]) % args.val_freq == 0 and int(match[1]) <= args.num_steps:
            names.append(match[0])
    return [output / name for name in names]


# ============================================================================ the run
def main(args: argparse.Namespace) -> dict[str, float]:
    """Train; returns the last averaged training metrics (and validation metrics if any)."""
    check_args(get_args_parser(), args)
    distributed, rank, world_size, device = setup_distributed(args.device)
    try:
        inputs = resolve_inputs(args, rank=rank, world_size=world_size)
        run = setup_run(args, inputs, distributed=distributed, rank=rank, world_size=world_size, device=device)
        try:
            return train_loop(run, args)
        except TrainingStopped as error:
            raise SystemExit(f"error: {error}") from None
        finally:
            run.close()
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class Inputs:
    """What a run starts from, all checked before a model, a download or a file of the run exists."""

    output: Path
    loader: data.DataLoader  # the training split, verified, from the resumed step on
    val_dataset: data.Dataset | None  # the validation split, verified (None without --validation)
    state: dict | None  # the training state of --resume (None: a new run)
    resume_path: Path | None
    restore_ckpt: str | None  # the file of --restore_ckpt (a registered name resolved, downloaded)
    semantic_weights: str | None  # a new stage 1's ImageNet weights (None: absent and --offline, or unused)
    offline: bool

    @property
    def start_step(self) -> int:
        return self.state["step"] if self.state else 0


def resolve_inputs(args: argparse.Namespace, *, rank: int, world_size: int) -> Inputs:
    """The data (`--root`, its split folders, their files), the state of `--resume`, then the
    weights of `--restore_ckpt` and of the semantic encoder (downloaded if need be). SystemExit
    (one line) at the first problem."""
    for split in ("train", *([args.val_split] if "facialflow" in args.validation else [])):
        if problem := split_problem(args.root, split):
            raise SystemExit(f"error: {problem}")
    if args.batch_size % world_size:
        raise SystemExit(f"error: --batch_size {args.batch_size} is not divisible by {world_size} processes")
    output = Path(args.output)
    resume_path = resolve_resume(args)
    state = load_training_state(resume_path, args) if resume_path is not None else None
    try:
        loader = build_train_loader(
            stage=args.stage,
            image_size=tuple(args.image_size),
            root=args.root,
            per_process_batch=args.batch_size // world_size,
            seed=args.seed,
            num_workers=args.num_workers if args.num_workers is not None else default_num_workers(),
            rank=rank,
            world_size=world_size,
            start_step=state["step"] if state else 0,
        )
        # the validation split now too, so that a damaged one fails at start-up, not at step val_freq
        val_dataset = build_val_dataset(args)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    offline = offline_requested(args.offline)
    try:  # a registered name, or its file when absent: downloaded once everything else is known to be right
        restore_ckpt = (
            resolve_weights(args.restore_ckpt, "--restore_ckpt", offline=offline) if args.restore_ckpt else None
        )
    except WeightsNotFetched as error:
        raise SystemExit(f"error: --restore_ckpt {args.restore_ckpt}: {error.unavailable.line()}") from None
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    new_stage_1 = state is None and not args.frozen
    return Inputs(
        output=output,
        loader=loader,
        val_dataset=val_dataset,
        state=state,
        resume_path=resume_path,
        restore_ckpt=restore_ckpt,
        semantic_weights=resolve_semantic_weights(args, offline=offline) if new_stage_1 else None,
        offline=offline,
    )


def resolve_resume(args: argparse.Namespace) -> Path | None:
    """The state file the run continues (None: a new run); check_args saw that the named ones exist."""
    if args.resume is None:
        return None
    if args.resume in (RESUME_THIS_RUN, RESUME_AUTO):
        path = this_run_state(args)
        return path if path.is_file() or args.resume == RESUME_THIS_RUN else None
    return Path(args.resume)


def resolve_semantic_weights(args: argparse.Namespace, *, offline: bool) -> str | None:
    """The ImageNet ResNet-50 of a new stage 1's semantic encoder: `--semantic_weights`, else
    torchvision's file in torch.hub's cache, downloaded when absent. Absent with `offline`: None
    (the encoder stays random, said in the log and recorded in the run's files). A failed
    download: SystemExit, one line naming the file and the command that fetches it."""
    if args.semantic_weights is not None:
        return args.semantic_weights
    try:
        return str(ensure(REGISTRY[SEMANTIC], offline=offline))
    except WeightsUnavailable as error:
        if offline:
            return None
        raise SystemExit(f"error: ImageNet weights of the semantic encoder: {error.line()}") from None


def load_training_state(path: Path, args: argparse.Namespace) -> dict:
    """The state file of `--resume`; SystemExit (one line naming the file) when it cannot continue this run."""
    try:
        return read_state(path, {k: getattr(args, k) for k in RESUME_MUST_MATCH})
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


def build_val_dataset(args: argparse.Namespace):
    """The validation split (None without --validation facialflow)."""
    return FacialFlow(None, split=args.val_split, dataset_root=args.root) if "facialflow" in args.validation else None


@dataclass
class Run:
    """Everything a training run holds between steps."""

    model: DecFlow  # the bare model (weights files, evaluation)
    wrapped: nn.Module  # what the steps call: the model, or its DataParallel / DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loader: data.DataLoader
    val_dataset: data.Dataset | None
    log: RunLog
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype of the forward passes (None: float32)
    distributed: bool
    rank: int
    world_size: int
    output: Path
    start_step: int
    semantic_encoder: str | None  # where its weights come from (RANDOM_INITIALISATION; None: not recorded)
    scaler_skipped: int  # optimizer steps the GradScaler skipped so far (the whole run)
    resume_rng: dict | None  # RNG states of a resumed run, restored once the loader has started
    stop: StopRequest | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def state_path(self) -> Path:
        return self.output / f"{self.log.name}{STATE_SUFFIX}"

    def close(self) -> None:
        if self.stop is not None:
            self.stop.restore()
        self.log.close()


def setup_run(
    args: argparse.Namespace,
    inputs: Inputs,
    *,
    distributed: bool,
    rank: int,
    world_size: int,
    device: torch.device | None,
) -> Run:
    """Log, device and precision, the model (restored from `--restore_ckpt`, or resumed), its
    wrapper and the optimiser; the log's files appear once all of it has worked."""
    state = inputs.state
    log = RunLog(
        inputs.output, args.name, enabled=rank == 0, start_step=inputs.start_step, history=state and state["history"]
    )
    try:
        if rank == 0:
            remove_stale_saves(inputs.output, args.name, log)
        device, amp_dtype = choose_device_and_precision(args, device, distributed=distributed, log=log)
        log_header(args, device=device, amp_dtype=amp_dtype, distributed=distributed, world_size=world_size, log=log)
        model = build_model(args)
        semantic_encoder = restore(model, args, inputs, log)
        model.to(device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        log(
            f"{'stage 2 (--frozen)' if args.frozen else 'stage 1'}: {sum(p.numel() for p in trainable):,} "
            f"trainable parameters of {sum(p.numel() for p in model.parameters()):,}"
        )
        wrapped = wrap(model, args, device=device, distributed=distributed)
        optimizer, scheduler, scaler = build_optimisation(trainable, args, device=device, amp_dtype=amp_dtype)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
        if note := upscaling_note(inputs.loader, tuple(args.image_size)):
            log(note)
        log.start()
    except BaseException:
        log.close()
        raise
    return Run(
        model=model,
        wrapped=wrapped,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        loader=inputs.loader,
        val_dataset=inputs.val_dataset,
        log=log,
        device=device,
        amp_dtype=amp_dtype,
        distributed=distributed,
        rank=rank,
        world_size=world_size,
        output=inputs.output,
        start_step=inputs.start_step,
        semantic_encoder=semantic_encoder,
        scaler_skipped=state.get("scaler_skipped", 0) if state else 0,
        resume_rng=state["rng"] if state else None,
    )


def remove_stale_saves(output: Path, name: str, log: RunLog) -> None:
    """What a killed save of this run left behind."""
    for path in (output / f"{name}{STATE_SUFFIX}", output / f"{name}.pth"):
        for stale in remove_stale_temporaries(path):
            log(f"removed {stale}, left by an interrupted save")


def choose_device_and_precision(
    args: argparse.Namespace, device: torch.device | None, *, distributed: bool, log: RunLog
) -> tuple[torch.device, torch.dtype | None]:
    """The device (torchrun's, else `--device` / `--gpus`) and the autocast dtype of `--mixed_precision` there."""
    if distributed:
        if args.gpus is not None:
            log("warning: under torchrun every process uses its LOCAL_RANK device: --gpus is ignored")
    else:
        device = choose_device(device, args.gpus, log)
    return device, resolve_amp_dtype(args.mixed_precision, device, parse_amp_dtype(args.amp_dtype), warn=log)


def log_header(
    args: argparse.Namespace,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    distributed: bool,
    world_size: int,
    log: RunLog,
) -> None:
    """The run's first lines: where and how it runs, every argument, and a note on validation."""
    log(
        f"DecFlow training '{args.name}' on {device}, {precision_name(amp_dtype)}"
        + (" with a GradScaler" if needs_grad_scaler(amp_dtype) else "")
        + (f", {world_size} processes (DistributedDataParallel)" if distributed else "")
        + ": "
        + " ".join(f"--{k} {v}" for k, v in sorted(vars(args).items()))
    )
    if args.validation:
        log(
            f"validation runs {args.val_iters} iterations (--val_iters; {VAL_ITERS} as the reference's), "
            f"evaluate.py {ITERS} by default: their EPEs differ"
        )


def build_model(args: argparse.Namespace) -> DecFlow:
    """DecFlow with the architecture of `args`, initialised from `--seed`, trainable as in stage 2
    (`--frozen`) or stage 1."""
    seed_everything(args.seed)
    model = DecFlow(model_config(args))
    set_trainable(model, 2 if args.frozen else 1)
    return model


def restore(model: DecFlow, args: argparse.Namespace, inputs: Inputs, log: RunLog) -> str | None:
    """The weights of the resumed state, else those of a new run (core.training.stages.initialise);
    returns where the semantic encoder's come from (None: a state file that does not say)."""
    if inputs.state is not None:
        try:
            model.load_state_dict(strip_data_parallel_prefix(inputs.state["model"]), strict=True)
        except RuntimeError as error:
            raise SystemExit(
                f"error: --resume {inputs.resume_path} does not fit this model: "
                f"{str(error).strip().splitlines()[-1].strip()}"
            ) from None
        log(f"resuming {inputs.resume_path} at step {inputs.start_step}")
        return inputs.state.get(SEMANTIC_SOURCE)
    if args.resume == RESUME_AUTO:
        log(f"--resume {RESUME_AUTO}: no {this_run_state(args)} yet, starting fresh")
    try:
        return initialise(
            model,
            2 if args.frozen else 1,
            restore_ckpt=inputs.restore_ckpt,
            semantic_weights=inputs.semantic_weights,
            log=log,
            offline=inputs.offline,
        )
    except (ValueError, FileNotFoundError) as error:  # a damaged or mismatched file, named
        raise SystemExit(f"error: {' '.join(str(error).split())}") from None


def wrap(model: DecFlow, args: argparse.Namespace, *, device: torch.device, distributed: bool) -> nn.Module:
    """What the steps call: DistributedDataParallel, DataParallel over `--gpus`, or the model itself."""
    # content-only attention leaves the (trainable in stage 1) relative-position tables unused
    unused = not args.frozen and not (args.position_only or args.position_and_content)
    try:
        return wrap_model(model, device=device, distributed=distributed, gpus=args.gpus, unused_parameters=unused)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


def build_optimisation(
    trainable: list[nn.Parameter], args: argparse.Namespace, *, device: torch.device, amp_dtype: torch.dtype | None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, torch.amp.GradScaler]:
    """AdamW and its one-cycle schedule over the `trainable` parameters, and the GradScaler of float16."""
    optimizer, scheduler = build_optimizer(
        trainable, lr=args.lr, wdecay=args.wdecay, epsilon=args.epsilon, num_steps=args.num_steps
    )
    return optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(amp_dtype))


# ============================================================================ the steps
def train_loop(run: Run, args: argparse.Namespace) -> dict[str, float]:
    """Steps until `--num_steps` (or `--stop_at`, or a signal); returns the last averaged
    training metrics, with the final validation metrics (`val_*`) when the run ends."""
    batches = start_steps(run, args)
    vis_freq = args.val_freq if args.vis_freq is None else args.vis_freq
    bar = progress_bar(
        total=args.num_steps, initial=run.start_step, disable=not run.is_main, unit="step", desc=args.name
    )
    window = PrintWindow.starting_at(run.start_step + 1)
    last: dict[str, float] = {}
    consecutive_bad = 0
    step = run.start_step
    try:
        while step < args.num_steps:
            batch = next_batch(run, batches, step, args)
            result = optimise(run, batch, step, args)
            step += 1
            consecutive_bad = record_step(run, window, result, step, consecutive_bad, args)
            lr = run.scheduler.get_last_lr()[0]
            show_step(bar, result, lr)
            if step % args.print_freq == 0 or step == args.num_steps:
                last = report(run, window, step, lr) or last
                window = PrintWindow.starting_at(step + 1)
            if vis_freq and step % vis_freq == 0 and not result.skipped:
                run.log.flow_images(step, batch, result.facial_preds[-1], result.head_preds[-1])
            del result
            if step % args.val_freq == 0 and step != args.num_steps:
                save_and_validate(run, step, args)
                bar.unpause()  # saving and validation stay out of the step rate
            if stop_requested(run, step, args):
                return last
        return {**last, **finish_run(run, step, args)}
    finally:
        bar.close()


def start_steps(run: Run, args: argparse.Namespace):
    """The batch stream, the RNG of a resumed run, training mode and the stop signals; returns the stream."""
    batches = iter(run.loader)
    if run.resume_rng is not None:  # after everything that draws random numbers at start-up
        set_rng_state(run.resume_rng)
    run.wrapped.train()
    if args.freeze_bn:
        set_bn_eval(run.model)
    run.stop = StopRequest()
    run.stop.install()
    return batches


def optimise(run: Run, batch, step: int, args: argparse.Namespace) -> StepResult:
    """One optimisation step on `batch` (noise of `--add_noise` seeded by the step), then the schedule's."""
    noise = (
        torch.Generator().manual_seed(sample_seed(args.seed, -1, step * run.world_size + run.rank))
        if args.add_noise
        else None
    )
    result = train_step(
        run.wrapped,
        batch,
        optimizer=run.optimizer,
        scaler=run.scaler,
        iters=args.iters,
        gamma=args.gamma,
        clip=args.clip,
        device=run.device,
        distributed=run.distributed,
        noise_generator=noise,
        amp_dtype=run.amp_dtype,
    )
    with warnings.catch_warnings():  # a skipped first step: "scheduler.step() before optimizer.step()"
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        run.scheduler.step()
    return result


def show_step(bar: tqdm, result: StepResult, lr: float) -> None:
    bar.update(1)
    if not result.skipped:
        bar.set_postfix(
            loss=f"{result.metrics['loss']:.3f}",
            epe=f"{result.metrics['facial_epe']:.3f}",
            lr=f"{lr:.2e}",
            refresh=False,
        )


def report(run: Run, window: PrintWindow, step: int, lr: float) -> dict[str, float] | None:
    """The print line of `window` (log, TensorBoard, curves' history); its mean metrics."""
    return report_window(
        run.log, window, step, lr, scaler=run.scaler, skipped_total=run.scaler_skipped, state_path=run.state_path
    )


def save_and_validate(run: Run, step: int, args: argparse.Namespace) -> None:
    """Every `--val_freq` steps: `{step}_{name}.pth`, the training state, validation and the curves."""
    if run.is_main:
        save_weights(run, step, args, run.output / f"{step}_{args.name}.pth")
    save_run_state(run, step, args)
    run_validation(run, args, step=step)
    run.log.curves()


def stop_requested(run: Run, step: int, args: argparse.Namespace) -> bool:
    """Whether the run stops here before `--num_steps`: at `--stop_at` (True) or on a signal
    (SystemExit 128 + signal); either way the training state is saved first."""
    if not (
        any_across_ranks(run.stop.signum is not None or step == args.stop_at, run.device, run.distributed)
        and step < args.num_steps
    ):
        return False
    save_run_state(run, step, args)
    reason = "stopped by --stop_at" if step == args.stop_at else "interrupted by a signal"
    run.log(
        f"{reason} after step {step}: training state saved to {run.state_path}; continue with --resume {run.state_path}"
    )
    run.log.curves()
    if run.stop.signum is not None:
        raise SystemExit(128 + run.stop.signum)
    return True


def next_batch(run: Run, batches, step: int, args: argparse.Namespace):
    try:
        return next(batches)
    except SampleError as error:  # a damaged or mismatched file of the split, named in the message
        raise SystemExit(f"error: {error}") from None
    except Exception:
        # Ctrl-C also reaches the loader workers, which then die: save and stop, don't crash
        if run.stop.signum is None:
            raise
        save_run_state(run, step, args)
        run.log(
            f"interrupted by a signal after step {step}: training state saved to {run.state_path}; "
            f"continue with --resume {run.state_path}"
        )
        raise SystemExit(128 + run.stop.signum) from None


def record_step(
    run: Run, window: PrintWindow, result: StepResult, step: int, consecutive_bad: int, args: argparse.Namespace
) -> int:
    """Count the step in `window`; returns the new number of consecutive refused updates
    (SystemExit, naming the step, at `--max_nonfinite`)."""
    window.steps += 1
    if result.skipped:
        window.bad += 1
        consecutive_bad += 1
        run.log(
            f"warning: step {step}: {result.skipped} (loss {result.metrics['loss']}), update skipped "
            f"({consecutive_bad} in a row)"
        )
        if consecutive_bad >= args.max_nonfinite:
            raise SystemExit(
                f"error: aborting at step {step}: {consecutive_bad} consecutive steps with a non-finite "
                f"loss or gradient or no valid ground truth (last good state: {run.state_path})"
            )
        return consecutive_bad
    if result.scaler_skipped:
        window.scaler_skipped += 1
        run.scaler_skipped += 1
    metrics = average_across_ranks(result.metrics, run.device, run.distributed)
    for key, value in metrics.items():
        window.metrics[key].append(value)
    return 0


def finish_run(run: Run, step: int, args: argparse.Namespace) -> dict[str, float]:
    """Final weights (also as `{num_steps}_{name}.pth`, linked, when it falls on val_freq), state,
    validation, curves and the summary line; returns the validation metrics as `val_*`."""
    if run.is_main:
        save_weights(run, step, args, run.output / f"{args.name}.pth")
        if step % args.val_freq == 0:  # the same file: a hard link (a copy where links are impossible)
            link_checkpoint(run.output / f"{args.name}.pth", run.output / f"{step}_{args.name}.pth")
    save_run_state(run, step, args)
    val = run_validation(run, args, step=step)
    run.log.curves()
    skipped = f" ({run.scaler_skipped} of {step} steps skipped by the GradScaler)" if run.scaler.is_enabled() else ""
    random = (
        "; WARNING: its frozen semantic encoder is RANDOM (no ImageNet weights): not the paper's model"
        if run.semantic_encoder == RANDOM_INITIALISATION
        else ""
    )
    run.log(f"done: {run.output / (args.name + '.pth')}{skipped}{random}")
    return {f"val_{k}": v for k, v in val.items()}


def save_weights(run: Run, step: int, args: argparse.Namespace, path: Path) -> None:
    """Weights in the authors' format, and beside them `.json`: architecture, step, arguments and
    where the semantic encoder's weights come from."""
    description = {"step": step, "training": plain_arguments(args), SEMANTIC_SOURCE: run.semantic_encoder}
    save_checkpoint(run.model, path, description=description)


def save_run_state(run: Run, step: int, args: argparse.Namespace) -> None:
    if run.is_main:
        save_state(
            run.state_path,
            model=run.model,
            optimizer=run.optimizer,
            scheduler=run.scheduler,
            scaler=run.scaler,
            step=step,
            args=args,
            history=run.log.plain_history(),
            scaler_skipped=run.scaler_skipped,
            amp_dtype=run.amp_dtype,
            semantic_encoder=run.semantic_encoder,
        )


def run_validation(run: Run, args: argparse.Namespace, *, step: int) -> dict[str, float]:
    """Validate on `run.val_dataset` (when `--validation facialflow`), log and return the metrics."""
    if run.val_dataset is None:
        return {}
    started = time.time()
    try:
        results = validate(
            run.wrapped,
            run.val_dataset,
            iters=args.val_iters,
            device=run.device,
            amp_dtype=run.amp_dtype,
            max_pairs=args.val_max_pairs,
            rank=run.rank,
            world_size=run.world_size,
        )
    except (ValueError, FileNotFoundError) as error:  # a damaged file of the split, or non-finite flow
        raise SystemExit(f"error: validation at step {step}: {error} (training state: {run.state_path})") from None
    run.log.scalars("val", step, results)
    run.log(
        f"validation facialflow/{args.val_split} at step {step} ({time.time() - started:.0f} s): "
        + ", ".join(f"{k} {v:.4f}" for k, v in results.items())
    )
    return results


if __name__ == "__main__":
    exit_on_error(lambda: main(get_args_parser().parse_args()))
