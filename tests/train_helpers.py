"""Helpers for the train.py tests: a tiny synthetic dataset, a GMA-format checkpoint, runs."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

import train
from core.synthetic import generate
from tests.model_helpers import GMA_TSV, authors_state_dict

ROOT = Path(__file__).resolve().parents[1]

GMA_GROUPS = ("fnet.", "cnet.", "update_block.", "att.")


def make_dataset(root: Path) -> Path:
    """1 subject x 4 frames (3 pairs) at 160x160 in the train and test splits."""
    generate(root, subjects=1, frames=4, size=(160, 160), seed=7, splits=("train", "test"))
    return root


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
