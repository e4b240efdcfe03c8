"""Helpers for the train.py tests: the dataset geometry, the smallest arguments, a GMA checkpoint, runs."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

import train
from tests.model_helpers import GMA_TSV, authors_state_dict

ROOT = Path(__file__).resolve().parents[1]

GMA_GROUPS = ("fnet.", "cnet.", "update_block.", "att.")


#: The training tests' dataset (the `synthetic_dataset` fixture's keywords): 1 subject x 4 frames
#: (3 pairs) at 160x160 in the train and test splits.
TRAIN_DATASET = {"subjects": 1, "frames": 4, "size": (160, 160), "seed": 7, "splits": ("train", "test")}

#: The smallest valid training run: stage 2 (--frozen) from initialisation, one step of one
#: 128x128 pair with one recurrent iteration, in the main process, on CPU.
TINY_TRAIN_ARGS = {
    "frozen": True,
    "image_size": (128, 128),
    "batch_size": 1,
    "iters": 1,
    "num_workers": 0,
    "num_steps": 1,
    "device": "cpu",
}


def tiny_train_args(**overrides: object) -> list[str]:
    """train.py's argv for `TINY_TRAIN_ARGS` updated by `overrides` (`name=value` is `--name value`;
    True: the flag alone; None or False: left out; a tuple or list: one token per item)."""
    argv = []
    for flag, value in {**TINY_TRAIN_ARGS, **overrides}.items():
        if value is None or value is False:
            continue
        argv.append(f"--{flag}")
        if isinstance(value, (tuple, list)):
            argv.extend(str(item) for item in value)
        elif value is not True:
            argv.append(str(value))
    return argv


def make_gma_checkpoint(path: Path) -> Path:
    """A GMA-format checkpoint: deterministic fnet/cnet/update_block/att weights, `module.` keys."""
    state = authors_state_dict(tsv=GMA_TSV)
    assert state and all(k.startswith("module.") and k[len("module.") :].startswith(GMA_GROUPS) for k in state)
    torch.save(state, path)
    return path


def scaled(command: str, **overrides: str) -> list[str]:
    """A seed README command (flags after `train.py`) with some flag values replaced / added."""
    tokens = command.split()
    args: dict[str, list[str]] = {}
    key = None
    for token in tokens:
        if token.startswith("--"):
            key = token
            args[key] = []
        else:
            args[key].append(token)
    for flag, value in overrides.items():
        args["--" + flag] = value.split() if value else []
    return [item for flag, values in args.items() for item in [flag, *values]]


def run(argv: list[str]) -> dict:
    return train.main(train.get_args_parser().parse_args(argv))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env
