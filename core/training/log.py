"""The run log of rank 0: text file and console, TensorBoard scalars and images, PNG curves."""
from __future__ import annotations

import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core.utils.flow_viz import flow_to_image, shared_max_flow


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
