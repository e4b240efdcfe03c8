"""The prepared GPU check (benchmarks/cuda_check.py) on CPU: its dry run goes through every part
and writes the logs and the summary; budgets stop a part and leave the rest for a next call."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pytest

from benchmarks import cuda_check

# The learning check's stand-in (one step of each precision through train.py and evaluate.py)
# is what tests/test_learning.py already runs; here the parts that need no training data.
DRY_PARTS = ["suite", "benchmark", "train_levers"]


def test_dry_run_runs_its_parts_and_writes_the_summary(tmp_path, capsys):
    """The suite, benchmark and train_levers parts' CPU stand-ins, each in its own process group (about
    60 s on 2 cores: a small pytest run and benchmarks at tiny sizes): the GPU check must not break unseen."""
    args = cuda_check.get_args_parser().parse_args(
        ["--dry-run", "--out", str(tmp_path), "--budget", "1500", "--parts", ",".join(DRY_PARTS)]
    )
    records = cuda_check.main(args)
    out = capsys.readouterr().out
    assert [r["part"] for r in records] == DRY_PARTS
    assert all(r["status"] == "passed" for r in records), records
    for name in DRY_PARTS:
        assert f"{name}: on the GPU `{' '.join(cuda_check.PARTS[name].command)}" in out  # the real command
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in DRY_PARTS}
    assert " passed" in logs["suite"].splitlines()[-1]  # pytest's closing line
    assert "<testcase" in (tmp_path / "suite.xml").read_text()
    assert "inference 128x128" in logs["benchmark"]
    assert "training-step levers" in logs["train_levers"] and "foreach-adamw" in logs["train_levers"]
    summary = (tmp_path / "summary.txt").read_text()
    assert "not run" not in summary and "training-step levers" in summary  # tables repeated from the logs
    assert json.loads((tmp_path / "summary.json").read_text())["parts"] == records


def test_parts_out_of_time_are_left_for_a_next_call(tmp_path):
    args = cuda_check.get_args_parser().parse_args(
        ["--dry-run", "--out", str(tmp_path), "--budget", "1", "--parts", "train_levers,benchmark"]
    )
    assert cuda_check.main(args) == []
    summary = (tmp_path / "summary.txt").read_text()
    assert "python -m benchmarks.cuda_check --parts benchmark,train_levers" in summary  # in priority order


def test_a_part_past_its_budget_is_killed_with_its_children(tmp_path):
    child = (
        "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        " print(p.pid, flush=True); time.sleep(60)"
    )
    record = cuda_check.run_part("slow", [sys.executable, "-c", child], tmp_path / "slow.log", 3, {})
    assert record["status"] == "timed out after 3 s" and record["seconds"] < 30
    grandchild = int((tmp_path / "slow.log").read_text().splitlines()[-1])
    assert grandchild_is_dead(grandchild)


def grandchild_is_dead(pid: int, patience_s: float = 10.0) -> bool:
    """SIGKILL is delivered asynchronously: a busy machine may still show the process
    running (State R, on its way out) for a moment after killpg returns. Gone, or a
    zombie not yet reaped by init, within `patience_s` counts as dead."""
    status = Path(f"/proc/{pid}/status")
    deadline = time.monotonic() + patience_s
    while True:
        try:
            if "State:\tZ" in status.read_text():
                return True
        except FileNotFoundError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def test_parts_are_checked_and_kept_in_priority_order():
    assert cuda_check.parse_parts("train_levers, suite") == ["suite", "train_levers"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown gpu"):
        cuda_check.parse_parts("suite,gpu")


def test_suite_runs_in_parallel_only_with_pytest_xdist():
    assert cuda_check.suite_arguments(8, xdist=False) == ([], {})
    assert cuda_check.suite_arguments(1, xdist=True) == ([], {})
    extra, env = cuda_check.suite_arguments(4, xdist=True)
    assert extra == ["-n", "4"] and int(env["OMP_NUM_THREADS"]) >= 1
