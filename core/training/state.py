"""Training state: RNG, the state file of `--resume` (save, read, checks) and stop signals."""

from __future__ import annotations

import random
import signal
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from core.checkpoint import (
    SEMANTIC_SOURCE,
    atomic_save,
    load_plain,
    nonfinite_entries,
    payload_sha256,
    reference_state_dict,
    verify_payload,
)
from core.errors import UserError
from core.parallel import unwrap
from core.precision import amp_dtype_name
from core.training.config import TrainConfig


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "name": numpy_state[0],
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def plain_arguments(config: TrainConfig) -> dict:
    """The options as plain values, sequences as lists as argparse gives them (what a state file
    and a weights file's .json record, what `weights_only` loads, what `--resume` compares)."""
    plain = (str, int, float, bool, type(None))
    values = {f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v for f in fields(config)}
    for key, value in values.items():
        if not (isinstance(value, plain) or (isinstance(value, list) and all(isinstance(v, plain) for v in value))):
            raise TypeError(f"argument {key} holds a {type(value).__name__}, not a plain value")
    return values


def save_state(
    path: Path,
    *,
    model,
    optimizer,
    scheduler,
    scaler,
    step: int,
    config: TrainConfig,
    history: dict,
    scaler_skipped: int = 0,
    amp_dtype: torch.dtype | None = None,
    semantic_encoder: str | None = None,
) -> None:
    """The training state, with the SHA-256 of its payload; its "config" is the architecture and
    the precision (`amp_dtype`) of the run; `semantic_encoder`: where the semantic encoder's weights
    come from (core.training.stages.initialise), for the weights files of a resumed run."""
    architecture_and_precision = {
        **asdict(unwrap(model).config),
        "mixed_precision": amp_dtype is not None,
        "amp_dtype": None if amp_dtype is None else amp_dtype_name(amp_dtype),
        "alternate_corr": False,
    }
    state = {
        "model": reference_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "step": step,
        "scaler_skipped": scaler_skipped,
        "rng": rng_state(),
        "args": plain_arguments(config),
        "config": architecture_and_precision,
        "history": history,
        SEMANTIC_SOURCE: semantic_encoder,
    }
    atomic_save({**state, "sha256": payload_sha256(state)}, path)


def read_state(path: Path, expected: dict) -> dict:
    """Read a training-state file for `--resume`; UserError (one line naming the file) when
    it is unreadable, not a state file, damaged (its checksum differs, a non-finite value)
    or from another run (an argument in `expected` saved with another value)."""
    try:
        state = load_plain(path)
    except UserError as error:
        raise UserError(f"--resume: {error}") from None
    if not (isinstance(state, dict) and all(key in state for key in ("step", "args", "optimizer", "model"))):
        raise UserError(f"--resume {path} is not a training-state file (no step, args, optimizer and model)")
    damaged = nonfinite_entries(state["model"]) + nonfinite_entries(state["optimizer"], "optimizer")
    if damaged:
        raise UserError(
            f"--resume {path} is damaged: non-finite values in {', '.join(damaged[:5])}"
            + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
            + "; resume from an earlier {step}_{name}.pth with --restore_ckpt instead"
        )
    try:
        verify_payload(path, state)
    except UserError as error:
        raise UserError(f"--resume: {error}") from None
    mismatched = [
        f"--{k} {state['args'].get(k)} (saved) vs {value}"
        for k, value in expected.items()
        if state["args"].get(k) != value
        and not (isinstance(state["args"].get(k), list) and list(value) == state["args"][k])
    ]
    if mismatched:
        raise UserError(f"cannot resume {path}: " + "; ".join(mismatched))
    return state
