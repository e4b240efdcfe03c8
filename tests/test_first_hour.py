"""What a new user meets in the first hour: the README's commands and links, the results
table's labels and the benchmark commands' help."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import evaluate
import get_flow
import train
from benchmarks import learning
from core import weights

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# The README's commands whose options are checked, by how they start.
PARSERS = {
    "python train.py": train.get_args_parser,
    "python evaluate.py": evaluate.get_args_parser,
    "python get_flow.py": get_flow.get_args_parser,
    "python -m core.weights": weights.get_args_parser,
}


def readme_commands() -> list[str]:
    """The lines of the README's bash blocks, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_the_readme_commands_parse():
    """Every train.py / evaluate.py / get_flow.py / core.weights command of the README, the seed
    commands included, has only options that its script knows (argparse exits 2 otherwise)."""
    checked = 0
    for command in readme_commands():
        start = next((s for s in PARSERS if command.startswith(s + " ") or command == s), None)
        if start is not None:
            parser = PARSERS[start]()
            parser.allow_abbrev = False  # the README spells every option in full
            parser.parse_args(shlex.split(command)[len(start.split()) :])
            checked += 1
    seed = [c for c in readme_commands() if c.startswith("python train.py --name decflow")]
    assert checked >= 15 and len(seed) == 2 and all("--num_steps 10000" in c for c in seed)


def test_the_readme_links_and_size():
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(((?:docs|datasets|assets)/[^)#]+)", text)
    assert {"docs/benchmarks.md", "docs/learning-check.md", "docs/differences.md"} <= set(links)
    assert all((REPO / link).is_file() for link in links), [link for link in links if not (REPO / link).is_file()]
    assert len(text.splitlines()) <= 250  # for users; history and benchmark tables live in docs/


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
