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
`runs/{name}`.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import re
import signal
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils import data
from tqdm import tqdm

from core.checkpoint import (atomic_save, init_semantic_encoder, load_checkpoint, reference_state_dict,
                             remove_stale_temporaries, save_checkpoint, strip_data_parallel_prefix, unwrap)
from core.datasets import FacialFlow, default_num_workers, seed_worker, training_dataset
from core.evaluation import evaluate_facialflow
from core.loss import sequence_loss
from core.network import DecFlow
from core.precision import AMP_DTYPES, needs_grad_scaler, parse_amp_dtype, precision_name, resolve_amp_dtype
from core.utils.flow_viz import flow_to_image, shared_max_flow

STATE_SUFFIX = "_state.pth"
# Training-state entries that must match for a resumed run to continue the same run.
RESUME_MUST_MATCH = ("num_steps", "batch_size", "frozen", "lr", "num_heads", "position_only",
                     "position_and_content", "dropout", "stage", "image_size", "seed", "iters", "gamma",
                     "wdecay", "clip", "epsilon", "mixed_precision", "amp_dtype", "add_noise", "freeze_bn")
# Warn when the GradScaler skips more than this share of the steps of a print window.
SKIPPED_STEPS_WARNING = 0.05


# ============================================================================ arguments
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" only to help texts that do not already speak of their default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if "default" in (action.help or "") else super()._get_help_string(action)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train DecFlow (FacialFlowNet, ACM MM 2024). Defaults follow the paper's recipe; "
                    "stage 1 restores the GMA checkpoint, stage 2 adds --frozen and restores stage 1.",
        formatter_class=HelpFormatter, add_help=add_help)
    run = parser.add_argument_group("run")
    run.add_argument("--name", default="decflow", help="run name: output files are {name}.pth, {step}_{name}.pth, "
                     "{name}_state.pth, {name}.log, runs/{name}")
    run.add_argument("--stage", default="facialflow", choices=["facialflow"], help="training data")
    run.add_argument("--validation", nargs="*", default=[], choices=["facialflow"],
                     help="validate on these datasets every --val_freq steps (omit to skip validation)")
    run.add_argument("--output", default="checkpoints", help="folder for weights, state, log, curves, runs/")
    run.add_argument("--restore_ckpt", default=None,
                     help="initial weights: the GMA checkpoint for stage 1 (loaded non-strictly, the head decoder, "
                          "semantic encoder and fusion start fresh), the stage-1 weights for stage 2 (strict)")
    run.add_argument("--resume", nargs="?", const="auto", default=None, metavar="STATE",
                     help="continue from a training-state file; without a value: {output}/{name}_state.pth if it "
                          "exists, else start fresh (handy for preemptible jobs)")
    run.add_argument("--seed", type=int, default=1234, help="seed of torch, numpy, random and the data order")
    run.add_argument("--device", default=None,
                     help="cpu, cuda or cuda:N (default: cuda if available, else cpu; torchrun: cuda:LOCAL_RANK)")
    run.add_argument("--gpus", type=int, nargs="+", default=None,
                     help="GPU ids; several ids wrap the model in nn.DataParallel as the reference "
                          "(default 0; ignored, with a warning, on CPU and under torchrun)")
    run.add_argument("--stop_at", type=int, default=None, metavar="STEP",
                     help="stop after this step, saving the training state as on Ctrl-C (split a run into time "
                          "slots; continue with --resume)")

    data_group = parser.add_argument_group("data")
    data_group.add_argument("--root", default="datasets/FacialFlowNet", help="FacialFlowNet dataset folder")
    data_group.add_argument("--image_size", type=int, nargs=2, default=[480, 480], metavar=("H", "W"),
                            help="training crop (multiples of 8, >= 128)")
    data_group.add_argument("--batch_size", type=int, default=6,
                            help="total batch per step (split over DataParallel GPUs or torchrun processes)")
    data_group.add_argument("--num_workers", type=int, default=None,
                            help="data-loading processes per training process (default min(cpus, 8))")
    data_group.add_argument("--add_noise", action="store_true",
                            help="add Gaussian noise (std uniform in [0, 5]) to the images, as the reference option")

    optim_group = parser.add_argument_group("optimisation")
    optim_group.add_argument("--num_steps", type=int, default=10000, help="optimizer steps of this stage")
    optim_group.add_argument("--lr", type=float, default=0.000125, help="peak learning rate of OneCycleLR")
    optim_group.add_argument("--wdecay", type=float, default=0.00001, help="AdamW weight decay")
    optim_group.add_argument("--epsilon", type=float, default=1e-8, help="AdamW epsilon")
    optim_group.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (after unscaling)")
    optim_group.add_argument("--gamma", type=float, default=0.85, help="sequence-loss weight decay over iterations")
    optim_group.add_argument("--iters", type=int, default=12, help="recurrent iterations in training")
    optim_group.add_argument("--mixed_precision", action="store_true",
                             help="autocast: float16 with a GradScaler on CUDA (the paper's recipe); on CPUs "
                                  "bfloat16 where the CPU has it natively, else float32 with a warning")
    optim_group.add_argument("--amp_dtype", choices=sorted(AMP_DTYPES), default=None,
                             help="autocast dtype of --mixed_precision (default: float16 on CUDA, bfloat16 on CPU); "
                                  "float16 trains with a GradScaler, bfloat16 without")
    optim_group.add_argument("--max_nonfinite", type=int, default=5,
                             help="abort after this many consecutive steps with a non-finite loss or gradient "
                                  "(such steps are skipped)")

    model_group = parser.add_argument_group("model")
    model_group.add_argument("--frozen", action="store_true",
                             help="stage 2: train only update_block_head and change_dim")
    model_group.add_argument("--freeze_bn", action="store_true",
                             help="keep every BatchNorm in eval mode (frozen running statistics); the reference "
                                  "updates them")
    model_group.add_argument("--semantic_weights", default=None, metavar="FILE",
                             help="ImageNet ResNet-50 weights (torchvision or pytorchcv naming) for the frozen "
                                  "semantic encoder in stage 1 (default: torchvision's cache, else it stays random "
                                  "with a warning)")
    model_group.add_argument("--num_heads", type=int, default=1, help="GMA attention heads")
    model_group.add_argument("--position_only", action="store_true", help="GMA: position-only attention")
    model_group.add_argument("--position_and_content", action="store_true",
                             help="GMA: position and content attention")
    model_group.add_argument("--dropout", type=float, default=0.0, help="dropout in fnet/cnet")

    log_group = parser.add_argument_group("validation and logging")
    log_group.add_argument("--val_freq", type=int, default=1000,
                           help="save {step}_{name}.pth and the training state, and validate, every N steps")
    log_group.add_argument("--print_freq", type=int, default=100,
                           help="log averaged training metrics (log file, TensorBoard, curves) every N steps")
    log_group.add_argument("--vis_freq", type=int, default=None,
                           help="TensorBoard flow images every N steps (default: --val_freq; 0 = never)")
    log_group.add_argument("--val_split", default="test", choices=["train", "val", "test"],
                           help="split used by --validation facialflow (the reference uses test)")
    log_group.add_argument("--val_iters", type=int, default=32, help="recurrent iterations in validation")
    log_group.add_argument("--val_max_pairs", type=int, default=None,
                           help="validate on at most N evenly spaced pairs (default: all)")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject inconsistent arguments with parser.error (one line, exit code 2)."""
    for name in ("num_steps", "batch_size", "val_freq", "print_freq", "iters", "val_iters", "max_nonfinite"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if any(side % 8 or side < 128 for side in args.image_size):
        parser.error(f"--image_size sides must be multiples of 8 and >= 128, got {args.image_size}")
    for name in ("lr", "clip", "epsilon"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            parser.error(f"--{name} must be a positive number, got {getattr(args, name)}")
    if not (math.isfinite(args.wdecay) and args.wdecay >= 0):
        parser.error(f"--wdecay must be a number >= 0, got {args.wdecay}")
    if not (math.isfinite(args.gamma) and 0 < args.gamma <= 1):
        parser.error(f"--gamma must be in (0, 1], got {args.gamma}")
    output = Path(args.output)
    if output.exists() and not output.is_dir() or any(p.exists() and not p.is_dir() for p in output.parents):
        parser.error(f"--output {args.output}: a file is in the way of the output folder")
    if args.restore_ckpt is not None and not Path(args.restore_ckpt).is_file():
        parser.error(f"--restore_ckpt: file not found: {args.restore_ckpt} (checkpoints/README.md says where the "
                     "GMA and DecFlow weights come from)")
    if args.semantic_weights is not None and not Path(args.semantic_weights).is_file():
        parser.error(f"--semantic_weights: file not found: {args.semantic_weights}")
    if args.resume not in (None, "auto") and not Path(args.resume).is_file():
        parser.error(f"--resume: training-state file not found: {args.resume}")
    if args.vis_freq is not None and args.vis_freq < 0:
        parser.error("--vis_freq must be >= 0")
    if args.stop_at is not None and args.stop_at < 1:
        parser.error("--stop_at must be >= 1")
    if args.num_workers is not None and args.num_workers < 0:
        parser.error("--num_workers must be >= 0")


# ============================================================================ processes and devices
def setup_distributed(device_arg: str | None) -> tuple[bool, int, int, torch.device]:
    """Initialise the process group under torchrun. Returns (distributed, rank, world_size, device)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or "RANK" not in os.environ:
        return False, 0, 1, torch.device(device_arg) if device_arg else None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device_arg is None or device_arg.startswith("cuda"))
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True, rank, world_size, device


def choose_device(device: torch.device | None, gpus: list[int] | None, log) -> torch.device:
    """--device if given, else the first of --gpus on CUDA machines, else the CPU."""
    if device is None:
        device = torch.device(f"cuda:{(gpus or [0])[0]}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type != "cuda" and gpus is not None:
        log(f"warning: running on {device}: --gpus {' '.join(map(str, gpus))} is ignored")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    numpy_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": numpy_state[0], "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                       "pos": int(numpy_state[2]), "has_gauss": int(numpy_state[3]),
                       "cached_gaussian": float(numpy_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ============================================================================ data
def sample_seed(seed: int, epoch: int, slot: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, slot]).generate_state(1)[0])


class ResumableSampler(data.Sampler):
    """Endless, resumable stream of `(index, sample_seed)` for one process.

    Epoch e is a permutation of the dataset drawn from `(seed, e)`; process `rank` of
    `world_size` takes every world_size-th entry, truncated so every process gets the
    same whole number of batches (the reference drops incomplete batches). The stream
    starts at batch `start_batch`, so a resumed run sees exactly the samples the
    interrupted one would have seen next. Each sample carries a seed for its
    augmentation, a function of (seed, epoch, position) only.
    """

    def __init__(self, length: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0) -> None:
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self.batches_per_epoch = (length // world_size) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{length} training pairs are fewer than one batch of {batch_size} per process "
                             f"x {world_size} processes")

    def __iter__(self):
        epoch, batch = divmod(self.start_batch, self.batches_per_epoch)
        per_epoch = self.batches_per_epoch * self.batch_size
        while True:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + 7919 * epoch))
            positions = range(self.rank, self.length, self.world_size)[:per_epoch]
            for position in list(positions)[batch * self.batch_size:]:
                yield int(order[position]), sample_seed(self.seed, epoch, position)
            epoch, batch = epoch + 1, 0

    def __len__(self) -> int:  # one epoch; the stream itself is endless
        return self.batches_per_epoch * self.batch_size


class SeededSamples(data.Dataset):
    """Wraps a dataset: item `(index, seed)` is `dataset[index]` with torch, numpy and random seeded
    by `seed`, so an augmentation depends on the sample's place in the stream only (not on the
    worker, nor on earlier draws); the caller's random states are restored afterwards."""

    def __init__(self, dataset: data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        numpy_state, python_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                seed_everything(seed)
                return self.dataset[index]
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


def build_train_loader(args: argparse.Namespace, *, per_process_batch: int, rank: int, world_size: int,
                       start_step: int) -> data.DataLoader:
    dataset = training_dataset(args.stage, args.image_size, batch_size=per_process_batch, root=args.root)
    num_workers = args.num_workers if args.num_workers is not None else default_num_workers()
    sampler = ResumableSampler(len(dataset), per_process_batch, seed=args.seed, rank=rank,
                               world_size=world_size, start_batch=start_step)
    return data.DataLoader(SeededSamples(dataset), batch_size=per_process_batch, sampler=sampler,
                           num_workers=num_workers, pin_memory=torch.cuda.is_available(), drop_last=True,
                           worker_init_fn=seed_worker, persistent_workers=num_workers > 0)


# ============================================================================ validation
def build_val_dataset(args: argparse.Namespace):
    """The validation split (None without --validation facialflow)."""
    return FacialFlow(None, split=args.val_split, dataset_root=args.root) if "facialflow" in args.validation else None


def validate(model: nn.Module, dataset: data.Dataset, *, iters: int = 32, device: torch.device,
             max_pairs: int | None = None, rank: int = 0, world_size: int = 1) -> dict[str, float]:
    """Validation during training with evaluate.py's metrics (core.evaluation): facial, head and expression EPE
    and 1/3/5 px over the valid face-mask pixels (`{kind}_{metric}`), plus the reference
    protocol (`ffn_{metric}`, the paper's numbers), each averaged over pairs.

    `max_pairs` picks that many evenly spaced pairs. The pairs are shared among the
    processes of a distributed run and the means combined, so every rank must call this.
    """
    indices = list(range(len(dataset)))
    if max_pairs is not None and max_pairs < len(indices):
        indices = sorted({int(i) for i in np.linspace(0, len(dataset) - 1, max_pairs).round()})
    kinds = (("facial", "facial"), ("head", "head"), ("expression", "expression"), ("ffn_protocol", "ffn"))
    metrics = ("epe", "1px", "3px", "5px")
    sums = torch.zeros(len(kinds) * (len(metrics) + 1), dtype=torch.float64)
    mine = indices[rank::world_size]
    if mine:
        # its own progress bar (rank 0): validation takes a while on CPUs
        results = evaluate_facialflow(unwrap(model), data.Subset(dataset, mine), iters=iters, device=device,
                                      progress=rank == 0)
        for k, (kind, _) in enumerate(kinds):
            block = results.get(kind)
            if block:  # None: no pair with a face mask
                pairs = results["scored_pairs"][kind]
                base = k * (len(metrics) + 1)
                sums[base:base + len(metrics)] = torch.tensor([block[m] * pairs for m in metrics])
                sums[base + len(metrics)] = pairs
    if world_size > 1:
        sums = sums.to(device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    out = {}
    for k, (_, prefix) in enumerate(kinds):
        base = k * (len(metrics) + 1)
        count = sums[base + len(metrics)].item()
        for m, name in enumerate(metrics):
            out[f"{prefix}_{name}"] = sums[base + m].item() / count if count else float("nan")
    return out


# ============================================================================ logging
class RunLog:
    """Rank-0 observability: text log, console (through tqdm), TensorBoard, PNG curves."""

    def __init__(self, output: Path, name: str, *, enabled: bool, start_step: int, history: dict | None) -> None:
        self.enabled, self.output, self.name = enabled, output, name
        self.history = history or {"train": defaultdict(list), "val": defaultdict(list)}
        self.history = {k: defaultdict(list, v) for k, v in self.history.items()}
        self.writer = None
        self.file = None
        if enabled:
            output.mkdir(parents=True, exist_ok=True)
            self.file = open(output / f"{name}.log", "a", encoding="utf-8")
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(output / "runs" / name), purge_step=start_step or None)

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.file.write(f"{stamp} {message}\n")
        self.file.flush()
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()

    def scalars(self, prefix: str, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        for key, value in metrics.items():
            if math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)
            self.history[prefix][key].append((step, value))

    def flow_images(self, step: int, batch: tuple, facial_pred: torch.Tensor, head_pred: torch.Tensor) -> None:
        if not self.enabled:
            return
        _, _, flow_f, flow_h, *_ = batch
        pairs = {"facial": (facial_pred[0], flow_f[0]), "head": (head_pred[0], flow_h[0]),
                 "expression": (facial_pred[0] - head_pred[0], flow_f[0] - flow_h[0])}
        for kind, (pred, gt) in pairs.items():
            pred = pred.detach().float().cpu().permute(1, 2, 0).numpy()
            gt = gt.detach().float().cpu().permute(1, 2, 0).numpy()
            scale = shared_max_flow(gt)
            image = np.concatenate([flow_to_image(pred, max_flow=scale), flow_to_image(gt, max_flow=scale)], axis=1)
            self.writer.add_image(f"flow/{kind} (prediction | ground truth)", image, step, dataformats="HWC")

    def curves(self) -> None:
        """The reference's PNG curves: training loss, training and validation EPE."""
        if not self.enabled:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train, val = self.history["train"], self.history["val"]
        for filename, keys in ((f"{self.name}_loss.png", ("loss", "facial_loss", "head_loss", "expression_loss")),
                               (f"{self.name}_epe.png", ("facial_epe", "head_epe", "expression_epe"))):
            fig, ax = plt.subplots(figsize=(7, 4))
            for key in keys:
                if train.get(key):
                    steps, values = zip(*train[key])
                    # markers while there are few points: a line alone would not show them
                    ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3,
                            label=f"train {key}")
                if filename.endswith("epe.png") and val.get(key):
                    steps, values = zip(*val[key])
                    ax.plot(steps, values, "o--", label=f"val {key}")
            ax.set_xlabel("step")
            ax.set_title(f"{self.name}: {'loss' if 'loss' in filename else 'end-point error'}")
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
            fig.tight_layout()
            tmp = self.output / f".{filename}.tmp.png"
            fig.savefig(tmp, dpi=100)
            plt.close(fig)
            os.replace(tmp, self.output / filename)

    def plain_history(self) -> dict:
        return {k: {key: list(v) for key, v in d.items()} for k, d in self.history.items()}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()


# ============================================================================ training
class StopRequest:
    """SIGINT/SIGTERM handler: the first signal asks the loop to stop after the current step
    (the state is saved); a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def set_bn_eval(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def any_across_ranks(flag: bool, device: torch.device, distributed: bool) -> bool:
    if not distributed:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def average_across_ranks(metrics: dict[str, float], device: torch.device, distributed: bool) -> dict[str, float]:
    if not distributed:
        return metrics
    keys = sorted(metrics)
    tensor = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist()))


@dataclass
class StepResult:
    """What one optimisation step did. `skipped`: why the update was refused (a bad step);
    `scaler_skipped`: the GradScaler found non-finite float16 gradients and lowered its scale."""

    metrics: dict[str, float]
    facial_preds: list[torch.Tensor]
    head_preds: list[torch.Tensor]
    skipped: str | None = None
    scaler_skipped: bool = False


def train_step(model: nn.Module, batch: tuple, *, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               iters: int, gamma: float, clip: float, device: torch.device, distributed: bool,
               noise_generator: torch.Generator | None = None) -> StepResult:
    """One optimisation step (forward, loss, scaled backward, clipping, update)."""
    image1, image2, flow_f, flow_h, valid_f, valid_h, _ = [x.to(device, non_blocking=True) for x in batch]
    if noise_generator is not None:
        std = 5.0 * torch.rand((), generator=noise_generator).item()
        image1 = (image1 + std * torch.randn(image1.shape, generator=noise_generator).to(device)).clamp(0, 255)
        image2 = (image2 + std * torch.randn(image2.shape, generator=noise_generator).to(device)).clamp(0, 255)
    optimizer.zero_grad(set_to_none=True)
    facial_preds, head_preds = model(image1, image2, iters=iters)
    loss, metrics = sequence_loss(facial_preds, head_preds, flow_f, flow_h, valid_f, valid_h, gamma)
    if any_across_ranks(not math.isfinite(metrics["loss"]), device, distributed):
        return StepResult(metrics, facial_preds, head_preds, skipped="non-finite loss")
    no_ground_truth = math.isnan(metrics["facial_epe"]) and math.isnan(metrics["head_epe"])
    if any_across_ranks(no_ground_truth, device, distributed):
        return StepResult(metrics, facial_preds, head_preds, skipped="no valid ground-truth pixel")
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    metrics["grad_norm"] = float(grad_norm)
    if not scaler.is_enabled() and not math.isfinite(metrics["grad_norm"]):
        # grads are identical on all ranks
        return StepResult(metrics, facial_preds, head_preds, skipped="non-finite gradient")
    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
    scaler.step(optimizer)  # with float16 the scaler itself skips steps with inf/NaN gradients
    scaler.update()  # ... and then lowers its scale
    return StepResult(metrics, facial_preds, head_preds, scaler_skipped=scaler.is_enabled() and scaler.get_scale() < scale)


def resolve_resume(args: argparse.Namespace, output: Path) -> Path | None:
    if args.resume is None:
        return None
    if args.resume == "auto":
        path = output / f"{args.name}{STATE_SUFFIX}"
        return path if path.is_file() else None
    return Path(args.resume)


def load_training_state(path: Path, args: argparse.Namespace) -> dict:
    """Read a training-state file for `--resume`; SystemExit (one line naming the file) when
    it is unreadable, not a state file, damaged (a non-finite value) or from another run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state["step"], state["args"], state["optimizer"]  # noqa: B018 (a training-state file?)
    except Exception as error:  # unreadable, truncated or not a state file
        raise SystemExit(f"error: --resume {path} is not a readable training-state file: "
                         f"{str(error).splitlines()[0]}") from None
    damaged = nonfinite_entries(state["model"]) + nonfinite_entries(state["optimizer"], "optimizer")
    if damaged:
        raise SystemExit(f"error: --resume {path} is damaged: non-finite values in {', '.join(damaged[:5])}"
                         + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
                         + "; resume from an earlier {step}_{name}.pth with --restore_ckpt instead")
    mismatched = [f"--{k} {state['args'].get(k)} (saved) vs {getattr(args, k)}" for k in RESUME_MUST_MATCH
                  if state["args"].get(k) != getattr(args, k)
                  and not (isinstance(state["args"].get(k), list) and list(getattr(args, k)) == state["args"][k])]
    if mismatched:
        raise SystemExit(f"error: cannot resume {path}: " + "; ".join(mismatched))
    return state


def nonfinite_entries(tree, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a nested dict/list that hold NaN or inf."""
    if isinstance(tree, torch.Tensor):
        return [prefix or "tensor"] if tree.is_floating_point() and not torch.isfinite(tree).all() else []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    return [name for key, value in items for name in nonfinite_entries(value, f"{prefix}.{key}" if prefix else str(key))]


def build_model(args: argparse.Namespace, amp_dtype: torch.dtype | None) -> DecFlow:
    return DecFlow(num_heads=args.num_heads, position_only=args.position_only,
                   position_and_content=args.position_and_content, dropout=args.dropout,
                   mixed_precision=amp_dtype is not None, amp_dtype=amp_dtype, frozen=args.frozen)


def restore_initial_weights(model: DecFlow, args: argparse.Namespace, log) -> None:
    """Stage 1: ImageNet semantic encoder, then the GMA checkpoint non-strictly.
    Stage 2: the stage-1 weights strictly."""
    if not args.frozen:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            source = init_semantic_encoder(model, args.semantic_weights)
        for warning in caught:
            log(f"WARNING: {warning.message}")
        log(f"semantic encoder: {source}")
    if args.restore_ckpt is None:
        log("no --restore_ckpt: training from initialisation")
        return
    report = load_checkpoint(model, args.restore_ckpt, strict=args.frozen, verbose=False)
    log(("stage 2 (strict): " if args.frozen else "stage 1 (non-strict): ") + report.summary())


def plain_arguments(args: argparse.Namespace) -> dict:
    """The arguments as plain values (what a state file may hold and `weights_only` loads)."""
    plain = (str, int, float, bool, type(None))
    values = vars(args)
    for key, value in values.items():
        if not (isinstance(value, plain) or (isinstance(value, list) and all(isinstance(v, plain) for v in value))):
            raise TypeError(f"argument {key} holds a {type(value).__name__}, not a plain value")
    return dict(values)


def save_state(path: Path, *, model, optimizer, scheduler, scaler, step: int, args, history: dict,
               scaler_skipped: int = 0) -> None:
    atomic_save({"model": reference_state_dict(model), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                 "scaler_skipped": scaler_skipped, "rng": rng_state(), "args": plain_arguments(args),
                 "config": unwrap(model).config_dict(), "history": history}, path)


def main(args: argparse.Namespace) -> dict[str, float]:
    """Train; returns the last averaged training metrics (and validation metrics if any)."""
    parser = get_args_parser()
    check_args(parser, args)
    output = Path(args.output)
    distributed, rank, world_size, device = setup_distributed(args.device)
    try:
        run = setup_run(args, output=output, distributed=distributed, rank=rank, world_size=world_size,
                        device=device)
        try:
            return train_loop(run, args)
        finally:
            run.close()
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


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
    distributed: bool
    rank: int
    world_size: int
    output: Path
    start_step: int
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


def setup_run(args: argparse.Namespace, *, output: Path, distributed: bool, rank: int, world_size: int,
              device: torch.device | None) -> Run:
    """Log, device, precision, model (restored or resumed), wrapper, optimiser and data."""
    resume_path = resolve_resume(args, output)
    state = load_training_state(resume_path, args) if resume_path is not None else None
    start_step = state["step"] if state else 0
    log = RunLog(output, args.name, enabled=rank == 0, start_step=start_step, history=state and state["history"])
    try:
        if rank == 0:  # what a killed save of this run left behind
            for path in (output / f"{args.name}{STATE_SUFFIX}", output / f"{args.name}.pth"):
                for stale in remove_stale_temporaries(path):
                    log(f"removed {stale}, left by an interrupted save")
        if distributed:
            if args.gpus is not None:
                log("warning: under torchrun every process uses its LOCAL_RANK device: --gpus is ignored")
        else:
            device = choose_device(device, args.gpus, log)
        amp_dtype = resolve_amp_dtype(args.mixed_precision, device, parse_amp_dtype(args.amp_dtype), warn=log)
        log(f"DecFlow training '{args.name}' on {device}, {precision_name(amp_dtype)}"
            + (" with a GradScaler" if needs_grad_scaler(amp_dtype) else "")
            + (f", {world_size} processes (DistributedDataParallel)" if distributed else "")
            + ": " + " ".join(f"--{k} {v}" for k, v in sorted(vars(args).items())))

        seed_everything(args.seed)
        model = build_model(args, amp_dtype)
        if state is not None:
            model.load_state_dict(strip_data_parallel_prefix(state["model"]), strict=True)
            log(f"resuming {resume_path} at step {start_step}")
        else:
            if args.resume == "auto":
                log(f"--resume: no {output / (args.name + STATE_SUFFIX)} yet, starting fresh")
            restore_initial_weights(model, args, log)
        model.to(device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        log(f"{'stage 2 (--frozen)' if args.frozen else 'stage 1'}: {sum(p.numel() for p in trainable):,} "
            f"trainable parameters of {sum(p.numel() for p in model.parameters()):,}")
        wrapped = wrap_model(model, args, device=device, distributed=distributed)
        if args.batch_size % world_size:
            raise SystemExit(f"error: --batch_size {args.batch_size} is not divisible by {world_size} processes")

        optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.wdecay, eps=args.epsilon)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.num_steps + 100,
                                                        pct_start=0.05, cycle_momentum=False,
                                                        anneal_strategy="linear")
        scaler = torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(amp_dtype))
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
        try:
            loader = build_train_loader(args, per_process_batch=args.batch_size // world_size, rank=rank,
                                        world_size=world_size, start_step=start_step)
            # built (and verified) now, so that a damaged split fails at start-up, not at step val_freq
            val_dataset = build_val_dataset(args)
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None
    except BaseException:
        log.close()
        raise
    return Run(model=model, wrapped=wrapped, optimizer=optimizer, scheduler=scheduler, scaler=scaler, loader=loader,
               val_dataset=val_dataset, log=log, device=device, distributed=distributed, rank=rank,
               world_size=world_size, output=output, start_step=start_step,
               scaler_skipped=state.get("scaler_skipped", 0) if state else 0,
               resume_rng=state["rng"] if state else None)


def wrap_model(model: DecFlow, args: argparse.Namespace, *, device: torch.device, distributed: bool) -> nn.Module:
    """DistributedDataParallel under torchrun, DataParallel for `--gpus` with several ids, else the model."""
    if distributed:
        # content-only attention leaves the (trainable in stage 1) relative-position tables unused
        unused = not args.frozen and not (args.position_only or args.position_and_content)
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused)
    if device.type == "cuda" and args.gpus is not None and len(args.gpus) > 1:
        if device != torch.device(f"cuda:{args.gpus[0]}"):
            raise SystemExit(f"error: with --gpus {' '.join(map(str, args.gpus))} the model lives on "
                             f"cuda:{args.gpus[0]}; drop --device {device} or make it cuda:{args.gpus[0]}")
        return nn.DataParallel(model, device_ids=args.gpus)
    return model
@dataclass
class PrintWindow:
    """Metrics and step counts since the last print line."""

    metrics: dict[str, list[float]]
    steps: int = 0
    bad: int = 0  # refused updates: non-finite loss or gradient, no valid ground truth
    scaler_skipped: int = 0
    first_step: int = 1

    @classmethod
    def starting_at(cls, step: int) -> PrintWindow:
        return cls(metrics=defaultdict(list), first_step=step)

    def means(self) -> dict[str, float]:
        return {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in self.metrics.items()}


def train_loop(run: Run, args: argparse.Namespace) -> dict[str, float]:
    """Steps until `--num_steps` (or `--stop_at`, or a signal); returns the last averaged
    training metrics, with the final validation metrics (`val_*`) when the run ends."""
    batches = iter(run.loader)
    if run.resume_rng is not None:  # after everything that draws random numbers at start-up
        set_rng_state(run.resume_rng)
    run.wrapped.train()
    if args.freeze_bn:
        set_bn_eval(run.model)
    vis_freq = args.val_freq if args.vis_freq is None else args.vis_freq
    run.stop = StopRequest()
    run.stop.install()
    bar = tqdm(total=args.num_steps, initial=run.start_step, disable=not run.is_main, dynamic_ncols=True,
               unit="step", desc=args.name)
    window = PrintWindow.starting_at(run.start_step + 1)
    last: dict[str, float] = {}
    consecutive_bad = 0
    step = run.start_step
    try:
        while step < args.num_steps:
            batch = next_batch(run, batches, step, args)
            noise = (torch.Generator().manual_seed(sample_seed(args.seed, -1, step * run.world_size + run.rank))
                     if args.add_noise else None)
            result = train_step(run.wrapped, batch, optimizer=run.optimizer, scaler=run.scaler, iters=args.iters,
                                gamma=args.gamma, clip=args.clip, device=run.device, distributed=run.distributed,
                                noise_generator=noise)
            with warnings.catch_warnings():  # a skipped first step: "scheduler.step() before optimizer.step()"
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                run.scheduler.step()
            step += 1
            consecutive_bad = record_step(run, window, result, step, consecutive_bad, args)
            lr = run.scheduler.get_last_lr()[0]
            bar.update(1)
            if not result.skipped:
                bar.set_postfix(loss=f"{result.metrics['loss']:.3f}", epe=f"{result.metrics['facial_epe']:.3f}",
                                lr=f"{lr:.2e}", refresh=False)
            if step % args.print_freq == 0 or step == args.num_steps:
                last = report_window(run, window, step, lr) or last
                window = PrintWindow.starting_at(step + 1)
            if vis_freq and step % vis_freq == 0 and not result.skipped:
                run.log.flow_images(step, batch, result.facial_preds[-1], result.head_preds[-1])
            del result

            if step % args.val_freq == 0 and step != args.num_steps:
                if run.is_main:
                    save_checkpoint(run.model, run.output / f"{step}_{args.name}.pth")
                save_run_state(run, step, args)
                run_validation(run, args, step=step)
                run.log.curves()
            if any_across_ranks(run.stop.signum is not None or step == args.stop_at, run.device, run.distributed) \
                    and step < args.num_steps:
                save_run_state(run, step, args)
                reason = "stopped by --stop_at" if step == args.stop_at else "interrupted by a signal"
                run.log(f"{reason} after step {step}: training state saved to {run.state_path}; continue with "
                        f"--resume {run.state_path}")
                run.log.curves()
                if run.stop.signum is not None:
                    raise SystemExit(128 + run.stop.signum)
                return last
        return {**last, **finish_run(run, step, args)}
    finally:
        bar.close()


def next_batch(run: Run, batches, step: int, args: argparse.Namespace):
    try:
        return next(batches)
    except Exception:
        # Ctrl-C also reaches the loader workers, which then die: save and stop, don't crash
        if run.stop.signum is None:
            raise
        save_run_state(run, step, args)
        run.log(f"interrupted by a signal after step {step}: training state saved to {run.state_path}; "
                f"continue with --resume {run.state_path}")
        raise SystemExit(128 + run.stop.signum) from None


def record_step(run: Run, window: PrintWindow, result: StepResult, step: int, consecutive_bad: int,
                args: argparse.Namespace) -> int:
    """Count the step in `window`; returns the new number of consecutive refused updates
    (SystemExit, naming the step, at `--max_nonfinite`)."""
    window.steps += 1
    if result.skipped:
        window.bad += 1
        consecutive_bad += 1
        run.log(f"warning: step {step}: {result.skipped} (loss {result.metrics['loss']}), update skipped "
                f"({consecutive_bad} in a row)")
        if consecutive_bad >= args.max_nonfinite:
            raise SystemExit(f"error: aborting at step {step}: {consecutive_bad} consecutive steps with a non-finite "
                             f"loss or gradient or no valid ground truth (last good state: {run.state_path})")
        return consecutive_bad
    if result.scaler_skipped:
        window.scaler_skipped += 1
        run.scaler_skipped += 1
    metrics = average_across_ranks(result.metrics, run.device, run.distributed)
    for key, value in metrics.items():
        window.metrics[key].append(value)
    return 0


def report_window(run: Run, window: PrintWindow, step: int, lr: float) -> dict[str, float] | None:
    """The print line, TensorBoard scalars and warnings of a print window; its mean metrics.

    A window in which every step was refused stops the run: nothing was learnt in it.
    """
    if window.steps and window.bad == window.steps:
        raise SystemExit(f"error: stopping at step {step}: every step of steps {window.first_step}-{step} had a "
                         f"non-finite loss or gradient, or no valid ground truth (see the warnings above; last "
                         f"good state: {run.state_path})")
    means = window.means()
    run.log.scalars("train", step, {**means, "lr": lr, "skipped_steps": float(run.scaler_skipped)})
    run.log(f"[{step:6d}, lr {lr:.7f}] " + ", ".join(
        f"{k} {means[k]:.4f}" for k in ("loss", "facial_epe", "head_epe", "expression_epe", "facial_1px",
                                        "grad_norm") if k in means)
        + (f", skipped {window.scaler_skipped}/{window.steps} (GradScaler, {run.scaler_skipped} in all)"
           if run.scaler.is_enabled() else ""))
    if window.scaler_skipped > SKIPPED_STEPS_WARNING * window.steps:
        run.log(f"warning: the GradScaler skipped {window.scaler_skipped} of the {window.steps} steps "
                f"{window.first_step}-{step} (float16 gradients overflowed; scale now {run.scaler.get_scale():g})")
    return means or None


def finish_run(run: Run, step: int, args: argparse.Namespace) -> dict[str, float]:
    """Final weights (also as `{num_steps}_{name}.pth` when it falls on val_freq), state,
    validation, curves and the summary line; returns the validation metrics as `val_*`."""
    if run.is_main:
        if step % args.val_freq == 0:
            save_checkpoint(run.model, run.output / f"{step}_{args.name}.pth")
        save_checkpoint(run.model, run.output / f"{args.name}.pth")
    save_run_state(run, step, args)
    val = run_validation(run, args, step=step)
    run.log.curves()
    skipped = (f" ({run.scaler_skipped} of {step} steps skipped by the GradScaler)" if run.scaler.is_enabled()
               else "")
    run.log(f"done: {run.output / (args.name + '.pth')}{skipped}")
    return {f"val_{k}": v for k, v in val.items()}


def save_run_state(run: Run, step: int, args: argparse.Namespace) -> None:
    if run.is_main:
        save_state(run.state_path, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler,
                   scaler=run.scaler, step=step, args=args, history=run.log.plain_history(),
                   scaler_skipped=run.scaler_skipped)


def run_validation(run: Run, args: argparse.Namespace, *, step: int) -> dict[str, float]:
    """Validate on `run.val_dataset` (when `--validation facialflow`), log and return the metrics."""
    if run.val_dataset is None:
        return {}
    started = time.time()
    results = validate(run.wrapped, run.val_dataset, iters=args.val_iters, device=run.device,
                       max_pairs=args.val_max_pairs, rank=run.rank, world_size=run.world_size)
    run.log.scalars("val", step, results)
    run.log(f"validation facialflow/{args.val_split} at step {step} ({time.time() - started:.0f} s): "
            + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
