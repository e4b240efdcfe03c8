"""A training run's configuration: train.py's options as one typed, frozen value, and the names
of the files a run writes (what `--resume` continues, what no input may be)."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path

from core.network import DecFlowConfig

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
# The run's files in `--output` besides `{step}_{name}.pth`/`.json` and `runs/{name}`.
RUN_FILE_SUFFIXES = (".pth", ".json", STATE_SUFFIX, ".log", "_loss.png", "_epe.png")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """What train.py's options say, checked there: one field per option, named as it (the
    defaults and the checks are train.py's). Sequences are tuples; `plain_arguments`
    (core.training.state) gives them back as the lists a state file records."""

    # run
    name: str
    stage: str
    validation: tuple[str, ...]
    output: str
    restore_ckpt: str | None  # a file or a registered name
    offline: bool
    resume: str | None  # None (a new run), RESUME_THIS_RUN, RESUME_AUTO or a training-state file
    seed: int
    device: str | None
    gpus: tuple[int, ...] | None
    stop_at: int | None
    # data
    root: str
    image_size: tuple[int, int]  # [H, W] of the training crop
    batch_size: int  # over all processes
    num_workers: int | None  # None: core.datasets.default_num_workers()
    add_noise: bool
    # optimisation
    num_steps: int
    lr: float
    wdecay: float
    epsilon: float
    clip: float
    gamma: float
    iters: int
    max_nonfinite: int
    # model (the fields of DecFlowConfig, and the precision)
    frozen: bool
    freeze_bn: bool
    semantic_weights: str | None
    num_heads: int
    position_only: bool
    position_and_content: bool
    dropout: float
    mixed_precision: bool
    amp_dtype: str | None
    # validation and logging
    val_freq: int
    print_freq: int
    vis_freq: int | None  # None: val_freq; 0: never
    val_split: str
    val_iters: int
    val_max_pairs: int | None

    @property
    def architecture(self) -> DecFlowConfig:
        return DecFlowConfig(**{f.name: getattr(self, f.name) for f in fields(DecFlowConfig)})

    @property
    def training_stage(self) -> int:
        """1, or 2 with `--frozen` (core.training.stages)."""
        return 2 if self.frozen else 1

    @property
    def validates(self) -> bool:
        return "facialflow" in self.validation

    @property
    def image_every(self) -> int:
        """TensorBoard flow images every this many steps (0: never)."""
        return self.val_freq if self.vis_freq is None else self.vis_freq

    @property
    def state_path(self) -> Path:
        """This run's training-state file: what a bare `--resume` continues."""
        return state_file(Path(self.output), self.name)


def state_file(output: Path, name: str) -> Path:
    """The training-state file of the run `name` in the folder `output`."""
    return output / f"{name}{STATE_SUFFIX}"


def run_outputs(output: Path, *, name: str, val_freq: int, num_steps: int, inputs: list[str]) -> list[Path]:
    """The files of the run `name` in `output` (of the `{step}_{name}` weights, those named like one of
    `inputs` that the run writes: a step that is a multiple of `val_freq`, up to `num_steps`)."""
    names = [f"{name}{suffix}" for suffix in RUN_FILE_SUFFIXES]
    step_file = re.compile(rf"(\d+)_{re.escape(name)}\.(pth|json)")
    for given in inputs:
        match = step_file.fullmatch(Path(given).name)
        if match and int(match[1]) % val_freq == 0 and int(match[1]) <= num_steps:
            names.append(match[0])
    return [output / name for name in names]
