"""The learning check runs end to end through train.py and evaluate.py (tiny sizes: its table,
not its numbers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import learning
from core.checkpoint import load_checkpoint
from core.network import DecFlow
from core.utils import flow_io
from tests.train_helpers import make_gma_checkpoint

# two steps of batch 1 at 1 iteration on one subject's 2 pairs of 128x128 frames
TINY = ["--device", "cpu", "--steps", "2", "--size", "128", "128", "--batch", "1", "--iters", "1"]
TINY += ["--subjects", "1", "--frames", "3", "--frame_size", "128", "128"]


def table_rows(out: str) -> dict[str, list[str]]:
    """The printed table's rows by run label (from its header to the first blank line)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("run "))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return {
        line[: learning.LABEL_WIDTH].strip(): line[learning.LABEL_WIDTH :].split() for line in lines[start + 1 : end]
    }


def test_learning_check_prints_every_row(tmp_path, capsys):
    """Two tiny trainings (float32 and bfloat16 autocast, emulated on AVX2: about 60 s on 2 cores) through the
    real benchmark; its rows and curves, not its numbers."""
    args = learning.get_args_parser().parse_args(
        [
            *TINY,
            "--val_points",
            "2",
            "--val_pairs",
            "1",
            "--amp_dtype",
            "bfloat16",
            "--workdir",
            str(tmp_path),
            "--curves",
            str(tmp_path / "plots" / "c.png"),
            "--parallel",
        ]
    )
    learning.main(args)
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert set(rows) == {"zero flow", "DIS (OpenCV)", "DecFlow fp32", "DecFlow bfloat16 autocast"}
    assert rows["DIS (OpenCV)"][1] == "-" and len(rows["DecFlow fp32"]) == 6  # 3 EPEs, <3px, seconds, skipped
    assert all(float(value) >= 0 for value in rows["DecFlow bfloat16 autocast"][:5])
    assert rows["DecFlow bfloat16 autocast"][5] == "-"  # bfloat16: no GradScaler
    assert (tmp_path / "fp32.pth").is_file() and (tmp_path / "amp.json").is_file()
    assert not (tmp_path / "FacialFlowNet" / "image" / "facial" / "val").exists()  # train and test only
    # both runs validated on the test split at steps 1 and 2, with the training iterations
    for name in ("fp32", "amp"):
        curve = learning.read_curves(tmp_path / f"{name}.log")
        assert [step for step, _ in curve["test"]["facial_epe"]] == [1, 2]
        assert [step for step, _ in curve["train"]["facial_epe"]] == [1, 2]
    assert learning.evaluation_iters(args) == 1
    assert (tmp_path / "plots" / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "DecFlow fp32: facial EPE, training batches" in out and "x zero flow's" in out


def test_learning_check_with_seeds_prints_their_mean_and_spread(tmp_path, capsys):
    """From a GMA-format start (as the seed recipe's stage 1), each seed trained and summarised."""
    gma_start = make_gma_checkpoint(tmp_path / "gma.pth")
    args = learning.get_args_parser().parse_args(
        [
            *TINY,
            "--amp_dtype",
            "bfloat16",
            "--workdir",
            str(tmp_path),
            "--seeds",
            "3",
            "4",
            "--start",
            str(gma_start),
            "--parallel",
            "--val_points",
            "0",
            "--curves",
            str(tmp_path / "c.png"),
        ]
    )
    learning.main(args)
    rows = table_rows(capsys.readouterr().out)
    for precision in ("DecFlow fp32", "DecFlow bfloat16 autocast"):
        seeds = [[float(v) for v in rows[f"{precision} seed {seed}"][:4]] for seed in (3, 4)]
        mean = [float(v) for v in rows[f"{precision} mean"][:4]]
        spread = [float(v) for v in rows[f"{precision} spread"][:4]]
        assert mean == pytest.approx([(a + b) / 2 for a, b in zip(*seeds)], abs=1.5e-3)  # of 3-decimal prints
        assert spread == pytest.approx([abs(a - b) for a, b in zip(*seeds)], abs=1.5e-3)  # of 3-decimal prints
        assert (tmp_path / f"{'fp32' if 'fp32' in precision else 'amp'}_seed4.pth").is_file()
    # the seed reaches train.py: another data order, other weights
    assert any(a != b for a, b in zip(*[rows[f"DecFlow fp32 seed {seed}"][:3] for seed in (3, 4)]))
    assert "stage 1 (non-strict)" in (tmp_path / "fp32_seed3.log").read_text(encoding="utf-8")
    assert not (tmp_path / "start.pth").exists()  # the given start, not a random one


def test_start_is_random_a_file_or_a_registered_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the registry's checkpoints/ folder: empty
    start = learning.starting_weights("random", tmp_path, offline=True)
    assert start == tmp_path / "start.pth"
    first = start.read_bytes()
    assert learning.starting_weights("random", tmp_path, offline=True).read_bytes() == first  # seeded
    load_checkpoint(DecFlow(), start)  # a whole DecFlow: loads strictly
    assert learning.starting_weights(str(start), tmp_path / "elsewhere", offline=True) == start
    with pytest.raises(SystemExit) as error:
        learning.starting_weights("gma-sintell", tmp_path, offline=True)
    assert str(error.value).startswith("--start: checkpoint gma-sintell not found") and "gma-sintel" in str(error.value)
    with pytest.raises(SystemExit) as error:
        learning.starting_weights("gma-sintel", tmp_path, offline=True)
    text = str(error.value)
    assert text.startswith("--start gma-sintel:") and "python -m core.weights fetch gma-sintel" in text, text
    assert len(text.splitlines()[0]) < 200 and not (tmp_path / "checkpoints" / "gma-sintel.pth").exists()


def test_skipped_steps_reads_the_last_done_line(tmp_path):
    log = tmp_path / "amp.log"
    log.write_text(
        "2026-01-01 00:00:00 done: a.pth (7 of 300 steps skipped by the GradScaler)\n"
        "2026-01-01 00:00:09 done: a.pth (9 of 400 steps skipped by the GradScaler)\n"
    )
    assert learning.skipped_steps(log) == "9/400"
    log.write_text("2026-01-01 00:00:00 done: a.pth\n")
    assert learning.skipped_steps(log) == "-"


def test_read_curves_takes_print_and_validation_lines(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(
        "2026-01-01 00:00:00 DecFlow training 'run' on cpu, float32: --lr 0.0008\n"
        "2026-01-01 00:00:01 [    10, lr 0.0007900] loss 9.5, facial_epe 4.2500, head_epe 4.1000, facial_1px 0.1, "
        "grad_norm 30.5, skipped 0/10 (GradScaler, 0 in all)\n"
        "2026-01-01 00:00:02 validation facialflow/test at step 10 (3 s): facial_epe 5.0000, facial_1px 0.0500, "
        "head_epe nan, ffn_epe 12.5\n"
        "2026-01-01 00:00:03 [    20, lr 0.0007] loss 3.5, facial_epe 2.5e-01, head_epe 0.3\n"
    )
    curves = learning.read_curves(log)
    assert curves["train"]["facial_epe"] == [(10, 4.25), (20, 0.25)]
    assert curves["train"]["head_epe"] == [(10, 4.1), (20, 0.3)]
    assert curves["test"]["facial_epe"] == [(10, 5.0)] and np.isnan(curves["test"]["head_epe"][0][1])
    assert "lr" not in curves["train"]
    learning.plot_curves({"fp32": curves}, {"facial": 6.0, "head": 6.0}, tmp_path / "c.png")
    assert flow_io.read_image(tmp_path / "c.png").shape[2] == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU defaults")
def test_cpu_defaults_train_and_score_alike():
    """On the CPU the frames move the face by pixels (interval 3, as 512x512 frames do at interval 1), the crops
    are close to the frame size and scoring uses the training iterations."""
    args = learning.get_args_parser().parse_args(["--device", "cpu"])
    assert args.frame_interval == 3.0 and learning.evaluation_iters(args) == args.iters
    assert min(args.frame_size) - 32 <= min(args.size) <= min(args.frame_size)  # crops close to the frame size
