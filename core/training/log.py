"""The run log of rank 0: text file and console, TensorBoard scalars and images, PNG curves;
the print windows of the training loop."""

from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from core.utils.atomic import atomic_path
from core.utils.flow_viz import flow_to_image, shared_max_flow

# Warn when the GradScaler skips more than this share of the steps of a print window.
SKIPPED_STEPS_WARNING = 0.05


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. nothing was learnt in a whole print window)."""


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
        pairs = {
            "facial": (facial_pred[0], flow_f[0]),
            "head": (head_pred[0], flow_h[0]),
            "expression": (facial_pred[0] - head_pred[0], flow_f[0] - flow_h[0]),
        }
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
        train, val = self.history["train"], self.history["val"]
        for filename, keys in (
            (f"{self.name}_loss.png", ("loss", "facial_loss", "head_loss", "expression_loss")),
            (f"{self.name}_epe.png", ("facial_epe", "head_epe", "expression_epe")),
        ):
            fig = Figure(figsize=(7, 4))  # no pyplot: no global backend or figure registry
            ax = fig.subplots()
            for key in keys:
                if train.get(key):
                    steps, values = zip(*train[key])
                    # markers while there are few points: a line alone would not show them
                    ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3, label=f"train {key}")
                if filename.endswith("epe.png") and val.get(key):
                    steps, values = zip(*val[key])
                    ax.plot(steps, values, "o--", label=f"val {key}")
            ax.set_xlabel("step")
            ax.set_title(f"{self.name}: {'loss' if 'loss' in filename else 'end-point error'}")
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
            fig.tight_layout()
            with atomic_path(self.output / filename) as tmp:
                fig.savefig(tmp, dpi=100)

    def plain_history(self) -> dict:
        return {k: {key: list(v) for key, v in d.items()} for k, d in self.history.items()}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()


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


def report_window(
    log: RunLog,
    window: PrintWindow,
    step: int,
    lr: float,
    *,
    scaler: torch.amp.GradScaler,
    skipped_total: int,
    state_path: Path,
) -> dict[str, float] | None:
    """The print line, TensorBoard scalars and warnings of a print window; its mean metrics.

    A window in which every step was refused stops the run (TrainingStopped, naming the step
    and the last good `state_path`): nothing was learnt in it. `skipped_total`: steps the
    GradScaler skipped in the whole run.
    """
    if window.steps and window.bad == window.steps:
        raise TrainingStopped(
            f"stopping at step {step}: every step of steps {window.first_step}-{step} had a "
            f"non-finite loss or gradient, or no valid ground truth (see the warnings above; "
            f"last good state: {state_path})"
        )
    means = window.means()
    log.scalars("train", step, {**means, "lr": lr, "skipped_steps": float(skipped_total)})
    log(
        f"[{step:6d}, lr {lr:.7f}] "
        + ", ".join(
            f"{k} {means[k]:.4f}"
            for k in ("loss", "facial_epe", "head_epe", "expression_epe", "facial_1px", "grad_norm")
            if k in means
        )
        + (
            f", skipped {window.scaler_skipped}/{window.steps} (GradScaler, {skipped_total} in all)"
            if scaler.is_enabled()
            else ""
        )
    )
    if window.scaler_skipped > SKIPPED_STEPS_WARNING * window.steps:
        log(
            f"warning: the GradScaler skipped {window.scaler_skipped} of the {window.steps} steps "
            f"{window.first_step}-{step} (float16 gradients overflowed; scale now {scaler.get_scale():g})"
        )
    return means or None
