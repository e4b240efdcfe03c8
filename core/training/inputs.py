"""What a training run starts from: the data, the state of `--resume` and the initial weights,
all checked (UserError, one line naming the file) before a model or a file of the run exists."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils import data

from core.cli import WeightsNotFetched, resolve_weights
from core.datasets import FacialFlow, default_num_workers, split_problem
from core.errors import UserError
from core.training.config import RESUME_AUTO, RESUME_MUST_MATCH, RESUME_THIS_RUN, TrainConfig
from core.training.data import build_train_loader
from core.training.state import plain_arguments, read_state
from core.weights import REGISTRY, SEMANTIC, WeightsUnavailable, ensure, offline_requested


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


def resolve_inputs(config: TrainConfig, *, rank: int, world_size: int) -> Inputs:
    """The data (`--root`, its split folders, their files), the state of `--resume`, then the
    weights of `--restore_ckpt` and of the semantic encoder (downloaded if need be). UserError
    (one line) at the first problem."""
    for split in ("train", *([config.val_split] if config.validates else [])):
        if problem := split_problem(config.root, split):
            raise UserError(problem)
    if config.batch_size % world_size:
        raise UserError(f"--batch_size {config.batch_size} is not divisible by {world_size} processes")
    resume_path = resolve_resume(config)
    state = load_training_state(resume_path, config) if resume_path is not None else None
    loader = build_train_loader(
        stage=config.stage,
        image_size=config.image_size,
        root=config.root,
        per_process_batch=config.batch_size // world_size,
        seed=config.seed,
        num_workers=config.num_workers if config.num_workers is not None else default_num_workers(),
        rank=rank,
        world_size=world_size,
        start_step=state["step"] if state else 0,
    )
    # the validation split now too, so that a damaged one fails at start-up, not at step val_freq
    val_dataset = build_val_dataset(config)
    offline = offline_requested(config.offline)
    try:  # a registered name, or its file when absent: downloaded once everything else is known to be right
        restore_ckpt = (
            resolve_weights(config.restore_ckpt, "--restore_ckpt", offline=offline) if config.restore_ckpt else None
        )
    except WeightsNotFetched as error:
        raise UserError(f"--restore_ckpt {config.restore_ckpt}: {error.unavailable.line()}") from None
    new_stage_1 = state is None and not config.frozen
    return Inputs(
        output=Path(config.output),
        loader=loader,
        val_dataset=val_dataset,
        state=state,
        resume_path=resume_path,
        restore_ckpt=restore_ckpt,
        semantic_weights=resolve_semantic_weights(config, offline=offline) if new_stage_1 else None,
        offline=offline,
    )


def resolve_resume(config: TrainConfig) -> Path | None:
    """The state file the run continues (None: a new run); train.py saw that the named ones exist."""
    if config.resume is None:
        return None
    if config.resume in (RESUME_THIS_RUN, RESUME_AUTO):
        path = config.state_path
        return path if path.is_file() or config.resume == RESUME_THIS_RUN else None
    return Path(config.resume)


def resolve_semantic_weights(config: TrainConfig, *, offline: bool) -> str | None:
    """The ImageNet ResNet-50 of a new stage 1's semantic encoder: `--semantic_weights`, else
    torchvision's file in torch.hub's cache, downloaded when absent. Absent with `offline`: None
    (the encoder stays random, said in the log and recorded in the run's files). A failed
    download: UserError, one line naming the file and the command that fetches it."""
    if config.semantic_weights is not None:
        return config.semantic_weights
    try:
        return str(ensure(REGISTRY[SEMANTIC], offline=offline))
    except WeightsUnavailable as error:
        if offline:
            return None
        raise UserError(f"ImageNet weights of the semantic encoder: {error.line()}") from None


def load_training_state(path: Path, config: TrainConfig) -> dict:
    """The state file of `--resume`; UserError (one line naming the file) when it cannot continue
    this run: an option of RESUME_MUST_MATCH recorded with another value."""
    arguments = plain_arguments(config)
    return read_state(path, {k: arguments[k] for k in RESUME_MUST_MATCH})


def build_val_dataset(config: TrainConfig) -> FacialFlow | None:
    """The validation split (None without --validation facialflow)."""
    return FacialFlow(None, split=config.val_split, dataset_root=config.root) if config.validates else None
