"""What runs tell the user besides their results: progress as whole lines where the output is not
a terminal, the pairs a stopped frame-folder run wrote, and torch.hub's warning that untrained
weights are random."""

from __future__ import annotations

import ast
import io
import warnings
from pathlib import Path

import pytest
from PIL import Image
from tqdm import tqdm

import get_flow
import hubconf
from core.cli import exit_on_error
from core.synthetic import cli as synthetic_cli
from core.synthetic import render_sequence
from core.utils.progress import progress_bar

REPO = Path(__file__).resolve().parents[1]
PROGRESS_MODULE = REPO / "core" / "utils" / "progress.py"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_prints_whole_lines_to_a_file_and_redraws_on_a_terminal() -> None:
    """`> log.txt` keeps every `\\r` redraw of a bar: off a terminal each display is one line."""
    log, terminal = io.StringIO(), Terminal()
    for stream in (log, terminal):
        with progress_bar(total=5, desc="flow", unit="pair", file=stream) as bar:
            for _ in range(5):
                bar.update(1)
                bar.set_postfix_str("loss 0.5")  # refreshes, as train.py's and the corpus's do
                tqdm.write("a message between updates", file=stream)
    lines = log.getvalue().split("\n")
    assert "\r" not in log.getvalue() and lines[-1] == ""  # whole lines, ended
    bar_lines = [line for line in lines if line.startswith("flow:")]
    assert bar_lines[0].startswith("flow:   0%") and "5/5" in bar_lines[-1] and "loss 0.5" in bar_lines[-1]
    assert lines.count("a message between updates") == 5
    assert "\r" in terminal.getvalue()  # a terminal keeps tqdm's bar, redrawn in place


def test_no_bar_is_made_without_the_helper() -> None:
    """Every progress bar of the project goes through core.utils.progress (train.py, evaluation,
    frame folders, corpora, synthetic data, downloads): no other module calls tqdm(...)."""
    direct = []
    for path in REPO.rglob("*.py"):
        if path == PROGRESS_MODULE or "tests" in path.relative_to(REPO).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "tqdm":
                direct.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not direct, direct


def test_synthetic_data_progress_is_whole_lines_in_a_log(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    synthetic_cli.main(["--root", str(tmp_path / "data"), "--subjects", "1", "--frames", "2", "--size", "64", "64"])
    err = capsys.readouterr().err
    assert "\r" not in err and "synthetic FacialFlowNet: 100%" in err and "3/3" in err  # 3 splits, 1 subject each


@pytest.fixture
def damaged_folder(tmp_path: Path) -> Path:
    """Four 128x128 frames, the third of them a damaged PNG."""
    folder = tmp_path / "seq"
    folder.mkdir()
    for index, frame in enumerate(render_sequence((128, 128), 4, seed=3, emotion="sad").facial_frames, start=1):
        Image.fromarray(frame).save(folder / f"{index:04d}.png")
    (folder / "0003.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged")
    return folder


def test_a_stopped_frame_folder_run_names_the_pairs_it_wrote(
    damaged_folder: Path, decflow_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The third frame stops the run after the pair 0001-0002: the one-line error says so, and says
    where (the pair 0002-0003 needs the damaged frame; 0003-0004 is never reached)."""
    out = tmp_path / "out"
    argv = ["--model", str(decflow_checkpoint), "--frames", str(damaged_folder), "--iters", "1", "--output", str(out)]
    args = get_flow.get_args_parser().parse_args([*argv, "--device", "cpu"])
    with pytest.raises(SystemExit) as stop:
        exit_on_error(lambda: get_flow.main(args))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    error = err.splitlines()[-1]
    assert error.startswith("get_flow.py: error: cannot read frame") and "0003.png" in error
    assert error.endswith(f"; written before it: 1 pair in {out} (seq_0001-0002)")
    assert sorted(path.name for path in out.iterdir()) == ["seq_0001-0002_flow.png"]
    assert "\r" not in err and "flow:  33%" in err  # the bar, a line per display, stopped at 1/3


def test_a_frame_folder_stopped_at_its_first_pair_says_nothing_was_written(
    damaged_folder: Path, decflow_checkpoint: Path, tmp_path: Path
) -> None:
    (damaged_folder / "0001.png").write_bytes(b"not an image")
    argv = ["--model", str(decflow_checkpoint), "--frames", str(damaged_folder), "--iters", "1"]
    args = get_flow.get_args_parser().parse_args([*argv, "--output", str(tmp_path / "out"), "--device", "cpu"])
    with pytest.raises(SystemExit, match=r"0001\.png.*; no pair was written$"):
        get_flow.main(args)


@pytest.mark.parametrize("entry", ["decflow", "decflow_estimator"])
def test_an_untrained_hub_model_warns_once_that_its_weights_are_random(entry: str) -> None:
    """One warning per model made (the estimator's, made by `decflow`, included)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every warning given, not only the first of a place
        getattr(hubconf, entry)(pretrained=False)
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(said) == 1 and "random" in said[0] and "pretrained=False" in said[0], said
