"""The learning check runs end to end through train.py and evaluate.py (tiny sizes: its table,
not its numbers)."""
from __future__ import annotations

import pytest

from benchmarks import learning


def test_learning_check_prints_every_row(tmp_path, capsys):
    args = learning.get_args_parser().parse_args(
        ["--device", "cpu", "--steps", "1", "--size", "128", "128", "--batch", "1", "--iters", "1",
         "--eval_iters", "1", "--subjects", "1", "--frames", "3", "--frame_size", "128", "128",
         "--amp_dtype", "bfloat16", "--workdir", str(tmp_path), "--parallel"])
    learning.main(args)
    out = capsys.readouterr().out
    rows = {line[:learning.LABEL_WIDTH].strip(): line[learning.LABEL_WIDTH:].split()
            for line in out.splitlines()[-4:]}
    assert set(rows) == {"zero flow", "DIS (OpenCV)", "DecFlow fp32", "DecFlow bfloat16 autocast"}
    assert rows["DIS (OpenCV)"][1] == "-" and len(rows["DecFlow fp32"]) == 6  # 3 EPEs, <3px, seconds, skipped
    assert all(float(value) >= 0 for value in rows["DecFlow bfloat16 autocast"][:5])
    assert rows["DecFlow bfloat16 autocast"][5] == "-"  # bfloat16: no GradScaler
    assert (tmp_path / "fp32.pth").is_file() and (tmp_path / "amp.json").is_file()


def test_learning_check_with_seeds_prints_their_mean_and_spread(tmp_path, capsys):
    args = learning.get_args_parser().parse_args(
        ["--device", "cpu", "--steps", "2", "--size", "128", "128", "--batch", "1", "--iters", "1",
         "--eval_iters", "1", "--subjects", "1", "--frames", "3", "--frame_size", "128", "128",
         "--amp_dtype", "bfloat16", "--workdir", str(tmp_path), "--seeds", "3", "4", "--parallel"])
    learning.main(args)
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("run "))
    rows = {line[:learning.LABEL_WIDTH].strip(): line[learning.LABEL_WIDTH:].split() for line in lines[start + 1:]}
    for precision in ("DecFlow fp32", "DecFlow bfloat16 autocast"):
        seeds = [[float(v) for v in rows[f"{precision} seed {seed}"][:4]] for seed in (3, 4)]
        mean = [float(v) for v in rows[f"{precision} mean"][:4]]
        spread = [float(v) for v in rows[f"{precision} spread"][:4]]
        assert mean == pytest.approx([(a + b) / 2 for a, b in zip(*seeds)], abs=1.5e-3)  # of 3-decimal prints
        assert spread == pytest.approx([abs(a - b) for a, b in zip(*seeds)], abs=1.5e-3)  # of 3-decimal prints
        assert (tmp_path / f"{'fp32' if 'fp32' in precision else 'amp'}_seed4.pth").is_file()
    # the seed reaches train.py: another data order, other weights
    assert any(a != b for a, b in zip(*[rows[f"DecFlow fp32 seed {seed}"][:3] for seed in (3, 4)]))


def test_skipped_steps_reads_the_last_done_line(tmp_path):
    log = tmp_path / "amp.log"
    log.write_text("2026-01-01 00:00:00 done: a.pth (7 of 300 steps skipped by the GradScaler)\n"
                   "2026-01-01 00:00:09 done: a.pth (9 of 400 steps skipped by the GradScaler)\n")
    assert learning.skipped_steps(log) == "9/400"
    log.write_text("2026-01-01 00:00:00 done: a.pth\n")
    assert learning.skipped_steps(log) == "-"
