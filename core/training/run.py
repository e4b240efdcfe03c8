"""A training run set up: the log, the device and precision, the model (restored, or resumed),
its wrapper and the optimiser, held together in `Run` between steps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils import data

from core.checkpoint import SEMANTIC_SOURCE, remove_stale_temporaries, strip_data_parallel_prefix
from core.defaults import ITERS, VAL_ITERS
from core.errors import UserError
from core.network import DecFlow
from core.precision import needs_grad_scaler, parse_amp_dtype, precision_name, resolve_amp_dtype
from core.training.config import RESUME_AUTO, TrainConfig, state_file
from core.training.data import upscaling_note
from core.training.distributed import choose_device, wrap_model
from core.training.inputs import Inputs
from core.training.log import RunLog
from core.training.stages import initialise, set_trainable
from core.training.state import StopRequest, plain_arguments, seed_everything
from core.training.step import build_optimizer


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
        return state_file(self.output, self.log.name)

    def close(self) -> None:
        if self.stop is not None:
            self.stop.restore()
        self.log.close()


def setup_run(
    config: TrainConfig,
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
        inputs.output, config.name, enabled=rank == 0, start_step=inputs.start_step, history=state and state["history"]
    )
    try:
        if rank == 0:
            remove_stale_saves(inputs.output, config.name, log)
        device, amp_dtype = choose_device_and_precision(config, device, distributed=distributed, log=log)
        log_header(config, device=device, amp_dtype=amp_dtype, distributed=distributed, world_size=world_size, log=log)
        model = build_model(config)
        semantic_encoder = restore(model, config, inputs, log)
        model.to(device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        log(
            f"{'stage 2 (--frozen)' if config.frozen else 'stage 1'}: {sum(p.numel() for p in trainable):,} "
            f"trainable parameters of {sum(p.numel() for p in model.parameters()):,}"
        )
        wrapped = wrap(model, config, device=device, distributed=distributed)
        optimizer, scheduler, scaler = build_optimisation(trainable, config, device=device, amp_dtype=amp_dtype)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
        if note := upscaling_note(inputs.loader, config.image_size):
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
    for path in (state_file(output, name), output / f"{name}.pth"):
        for stale in remove_stale_temporaries(path):
            log(f"removed {stale}, left by an interrupted save")


def choose_device_and_precision(
    config: TrainConfig, device: torch.device | None, *, distributed: bool, log: RunLog
) -> tuple[torch.device, torch.dtype | None]:
    """The device (torchrun's, else `--device` / `--gpus`) and the autocast dtype of `--mixed_precision` there."""
    if distributed:
        if config.gpus is not None:
            log("warning: under torchrun every process uses its LOCAL_RANK device: --gpus is ignored")
    else:
        device = choose_device(device, config.gpus, log)
    return device, resolve_amp_dtype(config.mixed_precision, device, parse_amp_dtype(config.amp_dtype), warn=log)


def log_header(
    config: TrainConfig,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    distributed: bool,
    world_size: int,
    log: RunLog,
) -> None:
    """The run's first lines: where and how it runs, every option, and a note on validation."""
    log(
        f"DecFlow training '{config.name}' on {device}, {precision_name(amp_dtype)}"
        + (" with a GradScaler" if needs_grad_scaler(amp_dtype) else "")
        + (f", {world_size} processes (DistributedDataParallel)" if distributed else "")
        + ": "
        + " ".join(f"--{k} {v}" for k, v in sorted(plain_arguments(config).items()))
    )
    if config.validation:
        log(
            f"validation runs {config.val_iters} iterations (--val_iters; {VAL_ITERS} as the reference's), "
            f"evaluate.py {ITERS} by default: their EPEs differ"
        )


def build_model(config: TrainConfig) -> DecFlow:
    """DecFlow with the architecture of `config`, initialised from `--seed`, trainable as in its stage."""
    seed_everything(config.seed)
    model = DecFlow(config.architecture)
    set_trainable(model, config.training_stage)
    return model


def restore(model: DecFlow, config: TrainConfig, inputs: Inputs, log: RunLog) -> str | None:
    """The weights of the resumed state, else those of a new run (core.training.stages.initialise);
    returns where the semantic encoder's come from (None: a state file that does not say)."""
    if inputs.state is not None:
        try:
            model.load_state_dict(strip_data_parallel_prefix(inputs.state["model"]), strict=True)
        except RuntimeError as error:
            raise UserError(
                f"--resume {inputs.resume_path} does not fit this model: {str(error).strip().splitlines()[-1].strip()}"
            ) from None
        log(f"resuming {inputs.resume_path} at step {inputs.start_step}")
        return inputs.state.get(SEMANTIC_SOURCE)
    if config.resume == RESUME_AUTO:
        log(f"--resume {RESUME_AUTO}: no {config.state_path} yet, starting fresh")
    try:
        return initialise(
            model,
            config.training_stage,
            restore_ckpt=inputs.restore_ckpt,
            semantic_weights=inputs.semantic_weights,
            log=log,
            offline=inputs.offline,
        )
    except (UserError, FileNotFoundError) as error:  # a damaged, mismatched or missing file, named
        raise UserError(" ".join(str(error).split())) from None


def wrap(model: DecFlow, config: TrainConfig, *, device: torch.device, distributed: bool) -> nn.Module:
    """What the steps call: DistributedDataParallel, DataParallel over `--gpus`, or the model itself."""
    # content-only attention leaves the (trainable in stage 1) relative-position tables unused
    unused = not config.frozen and not (config.position_only or config.position_and_content)
    return wrap_model(model, device=device, distributed=distributed, gpus=config.gpus, unused_parameters=unused)


def build_optimisation(
    trainable: list[nn.Parameter], config: TrainConfig, *, device: torch.device, amp_dtype: torch.dtype | None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, torch.amp.GradScaler]:
    """AdamW and its one-cycle schedule over the `trainable` parameters, and the GradScaler of float16."""
    optimizer, scheduler = build_optimizer(
        trainable, lr=config.lr, wdecay=config.wdecay, epsilon=config.epsilon, num_steps=config.num_steps
    )
    return optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(amp_dtype))
