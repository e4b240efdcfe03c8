"""A tiny micro-expression corpus with known flows for the MER pipeline's tests, and test-only stand-ins
for the modules other branches deliver (`core.mer.synthetic`'s ground truth, `core.mer.loso`, `core.mer.models`),
installed only while those modules are missing.

Corpus: per subject a smooth random texture (64x64); per clip an onset frame (the texture) and an apex frame
warped by head motion (a random affine map: shift, rotation, scale) plus the class's expression field (a
Gaussian bump moving down in the upper half: "negative"; outward in the lower half: "positive"; up in the
upper half: "surprise"), 1.5 px. Ground-truth expression, head and facial (= head + expression) flows are
`.npy` files beside the frames (`gt_<kind>.npy`).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from core.mer.clips import Clip
from core.mer.corpora import write_canonical

SIDE = 64
CLASSES = ("negative", "positive", "surprise")
EXPRESSION_PX = 1.5


def _texture(rng: np.random.Generator) -> np.ndarray:
    noise = rng.uniform(0, 255, (SIDE, SIDE, 3)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 2.0) * 3 - 255, 0, 255)


def expression_field(label: str) -> np.ndarray:
    """`[SIDE, SIDE, 2]` float32: the class's local displacement (px)."""
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    upper = np.exp(-((x - SIDE / 2) ** 2 + (y - SIDE / 4) ** 2) / (2 * (SIDE / 8) ** 2))
    lower = np.exp(-((y - 3 * SIDE / 4) ** 2) / (2 * (SIDE / 10) ** 2))
    flow = np.zeros((SIDE, SIDE, 2), np.float32)
    if label == "negative":
        flow[..., 1] = EXPRESSION_PX * upper
    elif label == "surprise":
        flow[..., 1] = -EXPRESSION_PX * upper
    else:
        flow[..., 0] = EXPRESSION_PX * lower * np.tanh((x - SIDE / 2) / 4)
    return flow


def head_field(rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """`[SIDE, SIDE, 2]`: an affine head motion of about `amplitude` px."""
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) - SIDE / 2
    shift = rng.uniform(-amplitude, amplitude, 2)
    angle, scale = rng.uniform(-1, 1, 2) * amplitude / SIDE
    u = shift[0] + scale * x - angle * y
    v = shift[1] + angle * x + scale * y
    return np.stack([u, v], axis=-1).astype(np.float32)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """The frame whose pixel x + flow(x) shows image(x) (backward map, first order)."""
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    return cv2.remap(image, x - flow[..., 0], y - flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def write_corpus(root: Path, *, subjects: int, clips_per_subject: int, head_px: float = 0.0, seed: int = 0) -> Path:
    """The corpus's canonical CSV (dataset "synthetic", frames are face crops)."""
    rng = np.random.default_rng(seed)
    clips = []
    for s in range(subjects):
        texture = _texture(rng)
        for c in range(clips_per_subject):
            label = CLASSES[c % len(CLASSES)]
            folder = root / f"s{s:02d}" / f"clip{c:02d}"
            folder.mkdir(parents=True)
            expression, head = expression_field(label), head_field(rng, head_px)
            apex = warp(texture, head + expression)
            for number, frame in ((1, texture), (2, apex)):
                cv2.imwrite(str(folder / f"img{number}.png"), np.round(frame[..., ::-1]).astype(np.uint8))
            for kind, flow in (("expression", expression), ("head", head), ("facial", head + expression)):
                np.save(folder / f"gt_{kind}.npy", flow)
            clips.append(Clip("synthetic", f"s{s:02d}", f"clip{c:02d}", folder, 1, 2, label, 2))
    csv = root / "synthetic.csv"
    write_canonical(csv, clips, cropped=True)
    return csv


def ground_truth_file(clip: Clip, kind: str) -> Path:
    return clip.frames / f"gt_{kind}.npy"


# ---------------------------------------------------------------- stand-ins (only while missing)
@dataclass
class LosoResult:
    predictions: torch.Tensor
    logits: torch.Tensor


@dataclass(frozen=True)
class TrainConfig:
    model: str = "ststnet"
    epochs: int = 800
    lr: float = 5e-5
    batch_size: int = 256
    dropout: float = 0.5
    seed: int = 0


def train_loso(inputs, targets, groups, *, num_classes, config, progress=False) -> LosoResult:
    """Stand-in: a nearest-class-mean classifier per held-out group (training groups only)."""
    flat = inputs.reshape(len(inputs), -1).float()
    logits = torch.zeros(len(inputs), num_classes)
    for group in sorted(set(groups)):
        held = torch.tensor([g == group for g in groups])
        means = torch.stack([flat[~held & (targets == k)].mean(0) for k in range(num_classes)])
        logits[held] = -torch.cdist(flat[held], means)
    return LosoResult(logits.argmax(1), logits)


def install_stand_ins() -> None:
    """Register the stand-ins under the missing modules' names (a module that exists is kept)."""
    stand_ins = {
        "core.mer.synthetic": {"ground_truth_file": ground_truth_file},
        "core.mer.loso": {"train_loso": train_loso, "TrainConfig": TrainConfig, "LosoResult": LosoResult},
        "core.mer.models": {"MODELS": {"ststnet": None}},
    }
    for name, members in stand_ins.items():
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            continue
        module = types.ModuleType(name)
        module.__dict__.update(members)
        sys.modules[name] = module
        setattr(sys.modules["core.mer"], name.rsplit(".", 1)[1], module)
