"""What a new user meets in the first hour: the results table's labels and the benchmark
commands' help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import evaluate
from benchmarks import learning

REPO = Path(__file__).resolve().parents[1]


def test_ffn_protocol_row_has_its_own_labels(synthetic_root: Path, capsys: pytest.CaptureFixture) -> None:
    """Its values (whole-image sums and counts over mask pixels) can exceed 1: they must not sit
    under the <1px/<3px/<5px accuracy columns."""
    evaluate.main(
        evaluate.get_args_parser().parse_args(
            ["--method", "zero", "--root", str(synthetic_root), "--max_pairs", "1", "--no_progress"]
        )
    )
    lines = capsys.readouterr().out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("ffn_protocol*"))
    accuracy_header = next(i for i, line in enumerate(lines) if "<1px" in line)
    assert accuracy_header < row - 1 and lines[accuracy_header + 1].startswith("facial")
    assert lines[row - 1].split()[:2] == ["EPE", "sum"] and "<1px" not in lines[row - 1]
    assert "1px cnt" in lines[row - 1] and "/ mask pixels" in lines[row - 1]
    assert any("not accuracies" in line for line in lines[row:])


@pytest.mark.parametrize(
    "module, shown",
    [
        (
            "benchmarks.learning",
            ["--steps STEPS", f"(default: {learning.get_args_parser().get_default('steps')})", "this machine's"],
        ),
        ("benchmarks.benchmark", ["6 with --device cuda", "1920x1080", "(default 3)"]),
    ],
)
def test_benchmark_help_shows_python_m_usage_and_defaults(module: str, shown: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m {module} ")
    text = " ".join(proc.stdout.split())  # help lines are wrapped
    for part in shown:
        assert part in text, part
