"""Command-line pieces shared by train.py, evaluate.py and get_flow.py: the model options, their
one-line errors and output-path checks. (argparse stops here: core modules below take
explicit arguments.)"""
from __future__ import annotations

import argparse
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from core.inference import COMPARED_FIELDS, load_model, resolve_device, resolve_inference_precision
from core.network import DecFlow, DecFlowConfig
from core.precision import AMP_DTYPES


class UserError(Exception):
    """A mistake in the command line or the inputs: reported as one line, no traceback."""


def add_model_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, training: bool = False
                        ) -> None:
    """The options that build the network (the fields of DecFlowConfig) and say how it runs, for
    train.py (`training`: adds `--dropout`) or for evaluate.py and get_flow.py (adds
    `--alternate_corr` and `--device`; train.py has its own `--device`, one per torchrun process).

    `--mixed_precision` is off by default in training (the seed commands pass it) and on for
    CUDA at inference (as the reference's evaluation); inference also takes `--no-mixed_precision`.
    Given a parser, the options go into a new "model" group; given a group, into that group.
    """
    group = parser.add_argument_group("model") if isinstance(parser, argparse.ArgumentParser) else parser
    group.add_argument("--num_heads", type=int, default=1, help="attention heads of GMA (default 1)")
    group.add_argument("--position_only", action="store_true", help="GMA: position-only attention")
    group.add_argument("--position_and_content", action="store_true", help="GMA: position and content attention")
    if training:
        group.add_argument("--dropout", type=float, default=0.0, help="dropout in fnet/cnet")
        group.add_argument("--mixed_precision", action="store_true",
                           help="autocast: float16 with a GradScaler on CUDA (the paper's recipe); on CPUs "
                                "bfloat16 where the CPU has it natively, else float32 with a warning")
    else:
        group.add_argument("--alternate_corr", action="store_true",
                           help="memory-bounded correlation (same results, slower; for large images)")
        group.add_argument("--mixed_precision", action=argparse.BooleanOptionalAction, default=None,
                           help="autocast (float16 on CUDA; bfloat16 on CPUs that have it natively, else float32 "
                                "with a warning); default: on for CUDA, off otherwise")
    group.add_argument("--amp_dtype", choices=sorted(AMP_DTYPES), default=None,
                       help="autocast dtype of --mixed_precision (default: float16 on CUDA, bfloat16 on CPU)"
                            + ("; float16 trains with a GradScaler, bfloat16 without" if training else ""))
    if not training:
        group.add_argument("--device", default=None,
                           help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)")


def model_config(args: argparse.Namespace) -> DecFlowConfig:
    """The architecture the model options describe (each DecFlowConfig field the parser has);
    UserError for impossible ones."""
    if args.num_heads < 1:
        raise UserError(f"--num_heads must be >= 1, got {args.num_heads}")
    if args.position_only and args.position_and_content:
        raise UserError("--position_only and --position_and_content are mutually exclusive")
    if "dropout" in args and not 0 <= args.dropout <= 1:
        raise UserError(f"--dropout must be in [0, 1], got {args.dropout}")
    return DecFlowConfig(**{f.name: getattr(args, f.name) for f in fields(DecFlowConfig) if f.name in args})


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The inference model options, as evaluate.py's results record them."""
    return {**{name: getattr(args, name) for name in COMPARED_FIELDS}, "alternate_corr": args.alternate_corr}


def device_and_precision(args: argparse.Namespace, *, mixed: bool = True) -> tuple[torch.device, torch.dtype | None]:
    """`--device` and the autocast dtype of `--mixed_precision/--amp_dtype` there (None: float32,
    also when `mixed` is False, e.g. for a baseline)."""
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        raise UserError(str(error)) from None
    return device, resolve_inference_precision(args.mixed_precision, args.amp_dtype, device) if mixed else None


def load_model_from_args(args: argparse.Namespace, checkpoint: str | os.PathLike, device: torch.device) -> DecFlow:
    """core.inference.load_model with the model options of `args`; problems as UserError."""
    config = model_config(args)
    try:
        return load_model(checkpoint, config=config, device=device)
    except ValueError as error:
        raise UserError(str(error)) from None


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """`path` as a Path if a file can be written there (missing folders are created later);
    otherwise a UserError naming `flag` and the path."""
    out = Path(path)
    if out.is_dir():
        raise UserError(f"{flag} {out} is a directory (give a file name, e.g. {out / 'results.json'})")
    if out.exists() and not os.access(out, os.W_OK):
        raise UserError(f"{flag} {out}: the file is not writable")
    folder = next(parent for parent in out.absolute().parents if parent.exists())
    if not folder.is_dir():
        raise UserError(f"{flag} {out}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {out}: folder {folder} is not writable")
    return out
