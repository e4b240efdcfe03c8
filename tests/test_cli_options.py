"""The options every script shares, declared once in core/cli.py: a whole number below 1 for
`--iters`, `--batch_size` (and the other counts) is the same one-line error, exit code 2, in
every script, before anything is loaded (core.export's: tests/test_export.py, which needs onnx)."""

from __future__ import annotations

import argparse

import pytest

import evaluate
import get_flow
import train
from core.cli import add_device_argument, add_weights_arguments, exit_on_error
from core.mer import cli as mer_cli

SCRIPTS = {  # prog: (its parser, the arguments it requires besides the count)
    "evaluate.py": (evaluate.get_args_parser, []),
    "get_flow.py": (get_flow.get_args_parser, []),
    "train.py": (train.get_args_parser, []),
    "python -m core.mer extract": (mer_cli.build_parser, ["extract", "--dataset", "casme2=x"]),
}
COUNTS = [
    ("evaluate.py", "--iters"),
    ("evaluate.py", "--batch_size"),
    ("evaluate.py", "--max_pairs"),
    ("get_flow.py", "--iters"),
    ("get_flow.py", "--batch_size"),
    ("get_flow.py", "--stride"),
    ("get_flow.py", "--max_frames"),
    ("train.py", "--iters"),
    ("train.py", "--batch_size"),
    ("train.py", "--num_steps"),
    ("train.py", "--val_iters"),
    ("python -m core.mer extract", "--iters"),
]


@pytest.mark.parametrize("prog, flag", COUNTS)
@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_count_below_one_is_the_same_one_line_error_everywhere(prog, flag, value, capsys):
    build, required = SCRIPTS[prog]
    with pytest.raises(SystemExit) as stop:
        exit_on_error(lambda: build().parse_args([*required, f"{flag}={value}"]))
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"{prog}: error: {flag} must be >= 1, got {value}\n"


@pytest.mark.parametrize("prog, flag", COUNTS)
def test_a_count_of_one_is_taken(prog, flag):
    build, required = SCRIPTS[prog]
    args = build().parse_args([*required, flag, "1"])
    assert getattr(args, flag.lstrip("-")) == 1


def _action(parser, flag: str):
    groups = [parser] + [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return next(a for g in groups for a in getattr(g, "_actions", []) if flag in a.option_strings)


def test_model_and_device_are_declared_once():
    """--model (evaluate.py, get_flow.py) and --device (those two and the MER harness) come from
    core/cli.py: one name, default and help (train.py words its own help: one per torchrun process)."""
    reference = argparse.ArgumentParser(allow_abbrev=False)
    add_weights_arguments(reference)
    add_device_argument(reference)
    parsers = [evaluate.get_args_parser(), get_flow.get_args_parser()]
    extract = mer_cli.build_parser()._subparsers._group_actions[0].choices["extract"]
    for flag in ("--model", "--device"):
        expected = _action(reference, flag)
        for parser in parsers + ([extract] if flag == "--device" else []):
            action = _action(parser, flag)
            assert (action.default, action.help, action.type) == (expected.default, expected.help, expected.type)
    assert _action(train.get_args_parser(), "--device").default is None
