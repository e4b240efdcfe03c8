"""The training loop: the steps until `--num_steps` (or `--stop_at`, or a signal), the saves,
validation and the end of a run; `train(config)` runs a whole one."""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from core.checkpoint import RANDOM_INITIALISATION, SEMANTIC_SOURCE, link_checkpoint, save_checkpoint
from core.errors import UserError
from core.training.config import TrainConfig
from core.training.data import SampleError, sample_seed
from core.training.distributed import any_across_ranks, average_across_ranks, setup_distributed
from core.training.inputs import resolve_inputs
from core.training.log import PrintWindow, report_window
from core.training.run import Run, setup_run
from core.training.state import StopRequest, plain_arguments, save_state, set_rng_state
from core.training.step import StepResult, set_bn_eval, train_step
from core.training.validation import validate
from core.utils.progress import progress_bar


def train(config: TrainConfig) -> dict[str, float]:
    """A whole run (one process of it under torchrun): its inputs, its setup, the steps and its
    end; returns the last averaged training metrics (and validation metrics if any). Bad input:
    UserError; nothing learnt in a print window: core.training.log.TrainingStopped; stopped by a
    signal: SystemExit(128 + signal)."""
    distributed, rank, world_size, device = setup_distributed(config.device)
    try:
        inputs = resolve_inputs(config, rank=rank, world_size=world_size)
        run = setup_run(config, inputs, distributed=distributed, rank=rank, world_size=world_size, device=device)
        try:
            return train_loop(run, config)
        finally:
            run.close()
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def train_loop(run: Run, config: TrainConfig) -> dict[str, float]:
    """Steps until `--num_steps` (or `--stop_at`, or a signal); returns the last averaged
    training metrics, with the final validation metrics (`val_*`) when the run ends."""
    batches = start_steps(run, config)
    bar = progress_bar(
        total=config.num_steps, initial=run.start_step, disable=not run.is_main, unit="step", desc=config.name
    )
    window = PrintWindow.starting_at(run.start_step + 1)
    last: dict[str, float] = {}
    consecutive_bad = 0
    step = run.start_step
    try:
        while step < config.num_steps:
            batch = next_batch(run, batches, step, config)
            result = optimise(run, batch, step, config)
            step += 1
            consecutive_bad = record_step(run, window, result, step, consecutive_bad, config)
            lr = run.scheduler.get_last_lr()[0]
            show_step(bar, result, lr)
            if step % config.print_freq == 0 or step == config.num_steps:
                last = report(run, window, step, lr) or last
                window = PrintWindow.starting_at(step + 1)
            if config.image_every and step % config.image_every == 0 and not result.skipped:
                run.log.flow_images(step, batch, result.facial_preds[-1], result.head_preds[-1])
            del result
            if step % config.val_freq == 0 and step != config.num_steps:
                save_and_validate(run, step, config)
                bar.unpause()  # saving and validation stay out of the step rate
            if stop_requested(run, step, config):
                return last
        return {**last, **finish_run(run, step, config)}
    finally:
        bar.close()


def start_steps(run: Run, config: TrainConfig):
    """The batch stream, the RNG of a resumed run, training mode and the stop signals; returns the stream."""
    batches = iter(run.loader)
    if run.resume_rng is not None:  # after everything that draws random numbers at start-up
        set_rng_state(run.resume_rng)
    run.wrapped.train()
    if config.freeze_bn:
        set_bn_eval(run.model)
    run.stop = StopRequest()
    run.stop.install()
    return batches


def optimise(run: Run, batch, step: int, config: TrainConfig) -> StepResult:
    """One optimisation step on `batch` (noise of `--add_noise` seeded by the step), then the schedule's."""
    noise = (
        torch.Generator().manual_seed(sample_seed(config.seed, -1, step * run.world_size + run.rank))
        if config.add_noise
        else None
    )
    result = train_step(
        run.wrapped,
        batch,
        optimizer=run.optimizer,
        scaler=run.scaler,
        iters=config.iters,
        gamma=config.gamma,
        clip=config.clip,
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


def save_and_validate(run: Run, step: int, config: TrainConfig) -> None:
    """Every `--val_freq` steps: `{step}_{name}.pth`, the training state, validation and the curves."""
    if run.is_main:
        save_weights(run, step, config, run.output / f"{step}_{config.name}.pth")
    save_run_state(run, step, config)
    run_validation(run, config, step=step)
    run.log.curves()


def stop_requested(run: Run, step: int, config: TrainConfig) -> bool:
    """Whether the run stops here before `--num_steps`: at `--stop_at` (True) or on a signal
    (SystemExit 128 + signal); either way the training state is saved first."""
    if not (
        any_across_ranks(run.stop.signum is not None or step == config.stop_at, run.device, run.distributed)
        and step < config.num_steps
    ):
        return False
    save_run_state(run, step, config)
    reason = "stopped by --stop_at" if step == config.stop_at else "interrupted by a signal"
    run.log(
        f"{reason} after step {step}: training state saved to {run.state_path}; continue with --resume {run.state_path}"
    )
    run.log.curves()
    if run.stop.signum is not None:
        raise SystemExit(128 + run.stop.signum)
    return True


def next_batch(run: Run, batches, step: int, config: TrainConfig):
    try:
        return next(batches)
    except SampleError:  # bad input (a damaged or mismatched file of the split, named), not a stop
        raise
    except Exception:
        # Ctrl-C also reaches the loader workers, which then die: save and stop, don't crash
        if run.stop.signum is None:
            raise
        save_run_state(run, step, config)
        run.log(
            f"interrupted by a signal after step {step}: training state saved to {run.state_path}; "
            f"continue with --resume {run.state_path}"
        )
        raise SystemExit(128 + run.stop.signum) from None


def record_step(
    run: Run, window: PrintWindow, result: StepResult, step: int, consecutive_bad: int, config: TrainConfig
) -> int:
    """Count the step in `window`; returns the new number of consecutive refused updates
    (UserError, naming the step, at `--max_nonfinite`)."""
    window.steps += 1
    if result.skipped:
        window.bad += 1
        consecutive_bad += 1
        run.log(
            f"warning: step {step}: {result.skipped} (loss {result.metrics['loss']}), update skipped "
            f"({consecutive_bad} in a row)"
        )
        if consecutive_bad >= config.max_nonfinite:
            raise UserError(
                f"aborting at step {step}: {consecutive_bad} consecutive steps with a non-finite "
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


def finish_run(run: Run, step: int, config: TrainConfig) -> dict[str, float]:
    """Final weights (also as `{num_steps}_{name}.pth`, linked, when it falls on val_freq), state,
    validation, curves and the summary line; returns the validation metrics as `val_*`."""
    if run.is_main:
        save_weights(run, step, config, run.output / f"{config.name}.pth")
        if step % config.val_freq == 0:  # the same file: a hard link (a copy where links are impossible)
            link_checkpoint(run.output / f"{config.name}.pth", run.output / f"{step}_{config.name}.pth")
    save_run_state(run, step, config)
    val = run_validation(run, config, step=step)
    run.log.curves()
    skipped = f" ({run.scaler_skipped} of {step} steps skipped by the GradScaler)" if run.scaler.is_enabled() else ""
    random = (
        "; WARNING: its frozen semantic encoder is RANDOM (no ImageNet weights): not the paper's model"
        if run.semantic_encoder == RANDOM_INITIALISATION
        else ""
    )
    run.log(f"done: {run.output / (config.name + '.pth')}{skipped}{random}")
    return {f"val_{k}": v for k, v in val.items()}


def save_weights(run: Run, step: int, config: TrainConfig, path: Path) -> None:
    """Weights in the authors' format, and beside them `.json`: architecture, step, arguments and
    where the semantic encoder's weights come from."""
    description = {"step": step, "training": plain_arguments(config), SEMANTIC_SOURCE: run.semantic_encoder}
    save_checkpoint(run.model, path, description=description)


def save_run_state(run: Run, step: int, config: TrainConfig) -> None:
    if run.is_main:
        save_state(
            run.state_path,
            model=run.model,
            optimizer=run.optimizer,
            scheduler=run.scheduler,
            scaler=run.scaler,
            step=step,
            config=config,
            history=run.log.plain_history(),
            scaler_skipped=run.scaler_skipped,
            amp_dtype=run.amp_dtype,
            semantic_encoder=run.semantic_encoder,
        )


def run_validation(run: Run, config: TrainConfig, *, step: int) -> dict[str, float]:
    """Validate on `run.val_dataset` (when `--validation facialflow`), log and return the metrics."""
    if run.val_dataset is None:
        return {}
    started = time.time()
    try:
        results = validate(
            run.wrapped,
            run.val_dataset,
            iters=config.val_iters,
            device=run.device,
            amp_dtype=run.amp_dtype,
            max_pairs=config.val_max_pairs,
            rank=run.rank,
            world_size=run.world_size,
        )
    except (UserError, FileNotFoundError) as error:  # a damaged or missing file of the split, or non-finite flow
        raise UserError(f"validation at step {step}: {error} (training state: {run.state_path})") from None
    run.log.scalars("val", step, results)
    run.log(
        f"validation facialflow/{config.val_split} at step {step} ({time.time() - started:.0f} s): "
        + ", ".join(f"{k} {v:.4f}" for k, v in results.items())
    )
    return results
