"""Command-line pieces shared by train.py, evaluate.py and get_flow.py: the model options and
their one-line errors, weights by name or path, and the output-path check of all three
(`check_output`). (argparse stops here: core modules below take
explicit arguments.)"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import NoReturn

import torch

from core.checkpoint import DEFAULT_CHECKPOINTS, default_checkpoint
from core.defaults import CHECKPOINTS_README, USAGE_ERROR_STATUS
from core.errors import UserError
from core.estimators import EstimatorSpec
from core.inference import load_model, resolve_device, resolve_inference_precision
from core.network import DecFlow, DecFlowConfig
from core.precision import AMP_DTYPES
from core.weights import (
    OFFLINE_VARIABLE,
    REGISTRY,
    RELEASE,
    WeightsUnavailable,
    ensure,
    registered_entry,
    registered_names,
    verified,
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" only to help texts that do not already speak of their default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if "default" in (action.help or "") else super()._get_help_string(action)


class DocstringHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """HelpFormatter for a description that is a module docstring (its lines kept as written)."""


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are the project's one line, `{prog}: error: {message}`,
    on stderr with exit code USAGE_ERROR_STATUS (2): argparse's usage block is not printed
    before it (`--help` shows it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR_STATUS, f"{self.prog}: error: {message}\n")


class AtLeastOne(argparse.Action):
    """A whole-number option that must be >= 1 (`--iters`, `--batch_size`, `--stride`, ...): its
    type and range declared once. `0` stops the parse with `{prog}: error: {flag} must be >= 1,
    got 0`, a `SystemExit` message that exit_on_error prints on one line with exit code 2."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, type=int, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if values < 1:
            raise SystemExit(f"{parser.prog}: error: {option_string} must be >= 1, got {values}")
        setattr(namespace, self.dest, values)


def add_batch_size_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, help: str, default: int = 1
) -> None:
    """`--batch_size` (pairs per forward pass; train.py: per optimizer step), >= 1."""
    parser.add_argument("--batch_size", action=AtLeastOne, default=default, help=help)


def add_model_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, training: bool = False) -> None:
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
        group.add_argument(
            "--mixed_precision",
            action="store_true",
            help="autocast: float16 with a GradScaler on CUDA (the paper's recipe); on CPUs "
            "bfloat16 where the CPU has it natively, else float32 with a warning",
        )
    else:
        group.add_argument(
            "--alternate_corr",
            action="store_true",
            help="memory-bounded correlation (same results, slower; for large images)",
        )
        group.add_argument(
            "--mixed_precision",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="autocast (float16 on CUDA; bfloat16 on CPUs that have it natively, else float32 "
            "with a warning); default: on for CUDA, off otherwise",
        )
    group.add_argument(
        "--amp_dtype",
        choices=sorted(AMP_DTYPES),
        default=None,
        help="autocast dtype of --mixed_precision (default: float16 on CUDA, bfloat16 on CPU)"
        + ("; float16 trains with a GradScaler, bfloat16 without" if training else ""),
    )
    if not training:
        add_device_argument(group)


def add_device_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    help: str = "torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)",
) -> None:
    """`--device` (None: core.inference.resolve_device's choice)."""
    parser.add_argument("--device", default=None, help=help)


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """`--model` (the weights: a file or a registered name, resolve_checkpoint) and `--offline`,
    as evaluate.py, get_flow.py and core.export take them."""
    parser.add_argument(
        "--model",
        default=None,
        help=f"checkpoint file or registered name (python -m core.weights list; default: the first of "
        f"{', '.join(DEFAULT_CHECKPOINTS)} that exists, else the authors' release, downloaded; "
        f"see {CHECKPOINTS_README})",
    )
    add_offline_argument(parser)


def add_offline_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--offline",
        action="store_true",
        help=f"never download weights (as {OFFLINE_VARIABLE}=1); missing ones are an error "
        "naming the command that fetches them",
    )


class WeightsNotFetched(UserError):
    """Registered weights that are absent and could not be had (a failed or refused download):
    `unavailable` names the file, what went wrong and the command that fetches it."""

    def __init__(self, message: str, unavailable: WeightsUnavailable) -> None:
        super().__init__(message)
        self.unavailable = unavailable


def resolve_weights(spec: str, flag: str, *, offline: bool) -> str:
    """`spec` of `flag` (`--model`, `--restore_ckpt`): an existing file as given, else a
    registered name or the usual place of one (e.g. `checkpoints/gma-sintel.pth`), which
    is downloaded and verified when absent unless `offline`. UserError otherwise (WeightsNotFetched
    for a failed or refused download; neither a file nor a name: the names are listed)."""
    if Path(spec).is_file():
        note_if_unverified(spec)
        return spec
    entry = registered_entry(spec)
    if entry is None:
        raise UserError(
            f"{flag}: checkpoint {spec} not found, and it is not a registered name either "
            f"(registered: {registered_names()}; see {CHECKPOINTS_README})"
        )
    try:
        return str(ensure(entry, offline=offline))
    except WeightsUnavailable as error:
        raise WeightsNotFetched(f"{flag} {spec}: {error.reason}\n{error.remedy}", error) from None


def note_if_unverified(path: str | os.PathLike) -> None:
    """A file at the usual place of a registered name (e.g. checkpoints/decflow-facialflownet.pth)
    that is not the verified file is used all the same, with a note (core.weights.verified)."""
    entry = registered_entry(path)
    if entry is not None and Path(path).absolute() == entry.destination().absolute():
        verified(entry, path)


def resolve_checkpoint(model: str | None, *, offline: bool) -> str:
    """The weights of `--model` (see resolve_weights), else the default checkpoint (said on
    one line): the first of core.checkpoint.DEFAULT_CHECKPOINTS there is (the release with a
    note when it is not the verified file), else the authors' release, downloaded unless
    `offline`. UserError: what is missing on the first line, how to get it on the next."""
    if model:
        return resolve_weights(model, "--model", offline=offline)
    try:
        path = default_checkpoint()
    except FileNotFoundError as error:
        try:
            path = ensure(REGISTRY[RELEASE], offline=offline)
        except WeightsUnavailable as fetch_error:
            raise UserError(
                f"no weights: {error}; pass --model PATH, or get the release:\n"
                f"  {RELEASE}: {fetch_error.reason}\n{fetch_error.remedy}"
            ) from None
    else:
        note_if_unverified(path)
    print(f"checkpoint: {path} (default; --model PATH chooses another)", flush=True)
    return str(path)


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


def device_and_precision(args: argparse.Namespace, *, mixed: bool = True) -> tuple[torch.device, torch.dtype | None]:
    """`--device` and the autocast dtype of `--mixed_precision/--amp_dtype` there (None: float32,
    also when `mixed` is False, e.g. for a baseline)."""
    device = resolve_device(args.device)
    return device, resolve_inference_precision(args.mixed_precision, args.amp_dtype, device) if mixed else None


def load_model_from_args(
    args: argparse.Namespace, checkpoint: str | os.PathLike, device: torch.device, *, sha256: str | None = None
) -> DecFlow:
    """core.inference.load_model with the model options of `args` (and the file's `sha256` when
    the caller has it); problems as UserError."""
    config = model_config(args)
    return load_model(checkpoint, config=config, device=device, sha256=sha256)


def estimator_spec(
    args: argparse.Namespace,
    checkpoint: str | os.PathLike,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    pad_mode: str,
    sha256: str | None = None,
) -> EstimatorSpec:
    """The estimator of the scripts (core.estimators.build_estimator builds it): the weights
    `checkpoint` with the model options (model_config), `--iters` and `--alternate_corr` of
    `args`, on `device`, autocast to `amp_dtype`, inputs padded in `pad_mode`; the file's
    `sha256` when the caller has it."""
    return EstimatorSpec(
        weights=Path(checkpoint),
        config=model_config(args),
        iters=args.iters,
        device=device,
        amp_dtype=amp_dtype,
        alternate_corr=args.alternate_corr,
        pad_mode=pad_mode,
        sha256=sha256,
    )


@contextmanager
def exit_on_user_error(prog: str) -> Iterator[None]:
    """Bad input inside (a UserError) leaves as `SystemExit("<prog>: error: <message>")`, the
    one-line form that exit_on_error prints; any other exception passes with its traceback."""
    try:
        yield
    except UserError as error:
        raise SystemExit(f"{prog}: error: {error}") from None


def exit_on_error(main: Callable[[], object]) -> None:
    """Run a script's `main` from the command line: its one-line errors (a SystemExit with a
    message, or a UserError as `error: <message>`) go to stderr with exit code
    USAGE_ERROR_STATUS (2), as argparse's do. Any other exception is a bug: it keeps its traceback."""
    try:
        main()
        return
    except UserError as error:
        message = f"error: {error}"
    except SystemExit as stop:
        if not isinstance(stop.code, str):
            raise
        message = stop.code
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(USAGE_ERROR_STATUS)


class FileInTheWay(UserError):
    """An output folder cannot be made because a file is where it (or a folder above it) should be."""


def check_output(
    path: str | os.PathLike,
    flag: str,
    *,
    folder: bool = False,
) -> Path:
    """`path` as a Path if a file (or, with `folder`, a folder) can be written there: missing
    folders are created later. UserError naming `flag` and the path otherwise (FileInTheWay
    when a file blocks a folder). `check_not_an_input` refuses an output that is an input."""
    out = Path(path)
    if folder:
        _check_folder(out, flag)
    else:
        _check_file(out, flag)
    return out


def check_not_an_input(
    out: str | os.PathLike, flag: str, inputs: Iterable[tuple[str, str | os.PathLike | None]]
) -> None:
    """UserError when the output `out` is (symlinks resolved) one of the `inputs` (what, path):
    `what` names the input's role (`checkpoint`, `--restore_ckpt`), or is `input` for a plain one."""
    check_none_is_an_input([out], flag, inputs)


def check_none_is_an_input(
    outputs: Iterable[str | os.PathLike], flag: str, inputs: Iterable[tuple[str, str | os.PathLike | None]]
) -> None:
    """`check_not_an_input` for many outputs, each input resolved once (a folder of frames has thousands)."""
    resolved: dict[Path, tuple[str, str | os.PathLike]] = {}
    for what, given in inputs:
        if given is not None:
            resolved.setdefault(Path(given).resolve(), (what, given))
    for out in outputs:
        found = resolved.get(Path(out).resolve())
        if found is not None:
            what, given = found
            named = f" ({given})" if str(given) != str(out) else ""
            role = "an input" if what == "input" else f"the input {what}"
            raise UserError(f"{flag} {out} is {role}{named}: refusing to overwrite an input")


def _check_file(out: Path, flag: str) -> None:
    if out.is_dir():
        raise UserError(f"{flag} {out} is a directory (give a file name, e.g. {out / 'results.json'})")
    if out.exists() and not os.access(out, os.W_OK):
        raise UserError(f"{flag} {out}: the file is not writable")
    folder = next(parent for parent in out.absolute().parents if parent.exists())
    if not folder.is_dir():
        raise UserError(f"{flag} {out}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {out}: folder {folder} is not writable")


def _check_folder(out: Path, flag: str) -> None:
    if out.exists() and not out.is_dir():
        raise FileInTheWay(f"{flag} {out} is a file, not a folder")
    existing = out
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if existing != out and not existing.is_dir():
        raise FileInTheWay(f"{flag} {out}: cannot create the folder, {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {out}: no permission to write in {existing}")
