"""One error style: bad input (core.errors.UserError) is one line on stderr and exit code 2; any
other exception, a ValueError raised by a bug in `core` included, keeps its traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import core.evaluation
import core.extract.corpus
import core.extract.sequence
import core.training.inputs
import core.training.run
import core.training.state
import core.training.validation
import evaluate
import get_flow
import train
from core.cli import exit_on_error
from core.errors import UserError
from core.training.data import ResumableSampler
from core.utils.augmentor import FacialFlowAugmentor
from tests.train_helpers import TRAIN_DATASET, tiny_train_args

REPO = Path(__file__).resolve().parents[1]
SIZE = (64, 64)  # px: small frames, one model run costs little


def write_frames(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")


def planted(*args, **kwargs):
    raise ValueError("planted")


def as_command_line(module, *argv: str) -> None:
    """`module`'s main as its `__main__` runs it (exit_on_error), in this process."""
    exit_on_error(lambda: module.main(module.get_args_parser().parse_args([*argv, "--device", "cpu"])))


def test_a_bug_in_core_under_get_flow_keeps_its_traceback(decflow_checkpoint, tmp_path, monkeypatch, capsys):
    """A ValueError from inside the sequence loop (where bad input becomes SequenceStopped) is
    neither made a one-line message nor an exit code 2."""
    write_frames(tmp_path / "frames", 2)
    monkeypatch.setattr(core.extract.sequence, "sequence_flows", planted)
    argv = ["--model", str(decflow_checkpoint), "--frames", str(tmp_path / "frames"), "--output", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="^planted$") as caught:
        as_command_line(get_flow, *argv, "--iters", "1")
    assert type(caught.value) is ValueError
    assert "error:" not in capsys.readouterr().err  # nothing printed as if it were the user's mistake


def test_a_bug_in_core_under_evaluate_keeps_its_traceback(synthetic_root, monkeypatch, capsys):
    """A ValueError from the metrics (where a damaged file of the split is bad input) propagates."""
    monkeypatch.setattr(core.evaluation, "_pair_metrics", planted)
    with pytest.raises(ValueError, match="^planted$") as caught:
        as_command_line(evaluate, "--method", "zero", "--root", str(synthetic_root), "--no_progress")
    assert type(caught.value) is ValueError
    assert "error:" not in capsys.readouterr().err


def as_train_command_line(argv: list[str]) -> None:
    """train.py's main as its `__main__` runs it (exit_on_error), in this process."""
    exit_on_error(lambda: train.main(train.get_args_parser().parse_args(argv)))


@pytest.fixture()
def train_argv(synthetic_dataset, tmp_path) -> list[str]:
    """One step of stage 2 on a private copy of the training tests' dataset (a test may damage it),
    validated on its test split."""
    root = synthetic_dataset.copy(tmp_path / "FacialFlowNet", **TRAIN_DATASET)
    return tiny_train_args(root=root, output=tmp_path / "out", name="r", validation="facialflow", val_iters=1)


def minimal_state(path: Path) -> Path:
    """A file with the keys of a training state and nothing in them (read_state gets past its first checks)."""
    torch.save({"step": 1, "args": {}, "optimizer": {}, "model": {}}, path)
    return path


#: Where training meets bad input, and what a bug there is planted in: (module or class, attribute).
TRAINING_PLANTS = {
    "reading --resume": (core.training.state, "nonfinite_entries"),
    "building the loader": (core.training.inputs, "build_train_loader"),
    "restoring the weights": (core.training.run, "initialise"),
    "wrapping the model": (core.training.run, "wrap_model"),
    "the training data": (FacialFlowAugmentor, "__call__"),
    "validation": (core.training.validation, "evaluate_facialflow"),
}


@pytest.mark.parametrize("where", TRAINING_PLANTS)
def test_a_bug_in_core_under_train_keeps_its_traceback(where, train_argv, tmp_path, monkeypatch, capsys):
    """A ValueError where training translates bad input into one line (the state of --resume, the
    data, --restore_ckpt, --gpus, a sample of the split, the validation pairs) is neither made a
    one-line message nor an exit code 2."""
    monkeypatch.setattr(*TRAINING_PLANTS[where], planted)
    resume = ["--resume", str(minimal_state(tmp_path / "state.pth"))] if where == "reading --resume" else []
    with pytest.raises(ValueError, match="^planted$") as caught:
        as_train_command_line([*train_argv, *resume])
    assert type(caught.value) is ValueError
    assert "error:" not in capsys.readouterr().err


def test_bad_input_under_train_stays_one_line_and_exit_code_2(train_argv, tmp_path, capsys):
    """The same places with bad input: a file that is not a training state, a truncated .flo of
    the validation split (found at the first validation, after the step)."""
    state = minimal_state(tmp_path / "state.pth")
    torch.save({"model": {}}, state)
    root = Path(train_argv[train_argv.index("--root") + 1])
    flow = sorted((root / "flow" / "facial" / "test").rglob("*.flo"))[0]
    flow.write_bytes(flow.read_bytes()[:100])
    expected = {
        "resume": f"error: --resume {state} is not a training-state file (no step, args, optimizer and model)",
        "validation": (
            f"error: validation at step 1: {flow}: truncated .flo file: header says 160x160 (204812 bytes) but "
            f"the file has 100 bytes (training state: {tmp_path / 'out' / 'r_state.pth'})"
        ),
    }
    for case, argv in (("resume", [*train_argv, "--resume", str(state)]), ("validation", train_argv)):
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            as_train_command_line(argv)
        err = capsys.readouterr().err  # after the progress bars of training and validation
        assert (stop.value.code, err.splitlines()[-1]) == (2, expected[case]) and "Traceback" not in err, case


def test_too_few_pairs_for_the_processes_is_bad_input():
    """3 pairs shared by 2 processes leave 1 each, fewer than a batch of 2: the user's numbers."""
    with pytest.raises(UserError, match="^3 training pairs are fewer than one batch of 2 per process x 2 processes$"):
        ResumableSampler(3, 2, seed=0, rank=0, world_size=2)


def test_a_corpus_records_a_bug_with_its_type_and_bad_input_as_its_line(decflow_checkpoint, tmp_path, monkeypatch):
    """The corpus goes on past both; failures.jsonl tells the bug (its type first) from the bad input."""
    for name in ("bug", "good", "mistake"):
        write_frames(tmp_path / "corpus" / name, 2)
    extract_sequence = core.extract.corpus.extract_sequence

    def failing(source, *args, **kwargs):
        sequence = Path(source.paths[0]).parent.name
        if sequence == "bug":
            raise ValueError("planted")
        if sequence == "mistake":
            raise UserError("planted bad input")
        return extract_sequence(source, *args, **kwargs)

    monkeypatch.setattr(core.extract.corpus, "extract_sequence", failing)
    out = tmp_path / "out"
    args = ["--model", str(decflow_checkpoint), "--corpus", str(tmp_path / "corpus"), "--output", str(out)]
    with pytest.raises(SystemExit, match=r"^get_flow.py: error: 2 of 3 sequences failed \(reasons in "):
        get_flow.main(get_flow.get_args_parser().parse_args([*args, "--iters", "1", "--device", "cpu"]))
    records = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert {r["sequence"]: r["error"] for r in records} == {
        "bug": "ValueError: planted",
        "mistake": "planted bad input",
    }
    assert (out / "good" / "good_0000-0001_flow.png").is_file()


def test_bad_input_is_exactly_one_line_and_exit_code_2(tmp_path):
    """As users run it: get_flow.py with a missing pair list."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "get_flow.py"), "--pairs", "missing.csv", "--device", "cpu"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (proc.returncode, proc.stderr) == (2, "get_flow.py: error: --pairs missing.csv not found\n")


def test_exit_on_error_takes_a_bare_user_error_and_passes_anything_else(capsys):
    def bad_input() -> None:
        raise UserError("--x 3: bad")

    def exit_status() -> None:
        raise SystemExit(3)

    with pytest.raises(SystemExit) as stop:
        exit_on_error(bad_input)
    assert (stop.value.code, capsys.readouterr().err) == (2, "error: --x 3: bad\n")
    with pytest.raises(ValueError, match="^planted$"):
        exit_on_error(planted)
    with pytest.raises(SystemExit) as stop:
        exit_on_error(exit_status)
    assert stop.value.code == 3 and capsys.readouterr().err == ""
