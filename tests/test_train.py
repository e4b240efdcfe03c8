"""train.py: the seed README commands scaled down, stage semantics, resume, safety, torchrun.

Everything runs on CPU with a tiny synthetic dataset (160x160 frames, 128x128 crops),
batch 1-2, 2-3 steps and 2 recurrent iterations.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from core.checkpoint import read_state_dict
from core.cli import exit_on_error
from core.network import DecFlow, DecFlowConfig
from core.training import loop as training_loop
from core.training import step as training_step
from core.training.config import RESUME_MUST_MATCH
from core.training.data import ResumableSampler
from core.training.stages import set_trainable
from core.training.state import plain_arguments
from tests.train_helpers import (
    ROOT,
    TRAIN_DATASET,
    free_port,
    make_gma_checkpoint,
    run,
    scaled,
    subprocess_env,
    tiny_train_args,
    train,
)

SEED_PART1 = (
    "--name decflow-facialflownet-part1 --stage facialflow --validation facialflow --output checkpoints "
    "--restore_ckpt checkpoints/gma-sintel.pth  --num_steps 10000 --lr 0.000125 --image_size 480 480 "
    "--wdecay 0.00001 --gamma 0.85 --gpus 0 --batch_size 6 --val_freq 1000 --print_freq 100 "
    "--mixed_precision"
)
SEED_PART2 = (
    "--name decflow --stage facialflow --validation facialflow  --output checkpoints --restore_ckpt "
    "checkpoints/decflow-facialflownet-part1.pth  --num_steps 10000 --lr 0.000125 --image_size 480 480 "
    "--wdecay 0.00001 --gamma 0.85 --gpus 0 --batch_size 6 --val_freq 1000 --print_freq 100 "
    "--mixed_precision --frozen"
)
# on CPU whether or not CUDA is present (runs must be comparable to the CPU-made expectations)
SMALL = dict(
    image_size="128 128",
    batch_size="1",
    iters="2",
    val_iters="2",
    val_max_pairs="1",
    num_workers="0",
    print_freq="1",
    device="cpu",
)
CPU = ["--device", "cpu"]


def _as_double(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`weights` in float64, compared as the resume tests always have."""
    return {key: value.double() for key, value in weights.items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory, synthetic_dataset):
    base = tmp_path_factory.mktemp("train")
    return {
        "root": synthetic_dataset(**TRAIN_DATASET),
        "gma": make_gma_checkpoint(base / "gma-sintel.pth"),
        "base": base,
    }


@pytest.fixture(scope="module")
def stage1(files):
    out = files["base"] / "stage1"
    argv = scaled(
        SEED_PART1,
        output=str(out),
        restore_ckpt=str(files["gma"]),
        root=str(files["root"]),
        num_steps="2",
        val_freq="1",
        **SMALL,
    )
    metrics = run(argv)
    return out, metrics


def test_seed_commands_parse_as_written():
    parser = train.get_args_parser()
    a1 = parser.parse_args(SEED_PART1.split())
    a2 = parser.parse_args(SEED_PART2.split())
    assert (a1.num_steps, a1.lr, a1.image_size, a1.wdecay, a1.gamma, a1.batch_size) == (
        10000,
        0.000125,
        [480, 480],
        0.00001,
        0.85,
        6,
    )
    assert (a1.val_freq, a1.print_freq, a1.mixed_precision, a1.frozen, a1.gpus) == (1000, 100, True, False, [0])
    assert a1.validation == ["facialflow"] and a2.frozen and a2.name == "decflow"
    assert (a1.iters, a1.clip, a1.epsilon, a1.seed, a1.val_iters, a1.val_split) == (12, 1.0, 1e-8, 1234, 32, "test")


def test_stage1_starts_from_gma_and_writes_outputs(files, stage1, capsys):
    out, metrics = stage1
    name = "decflow-facialflownet-part1"
    for filename in (
        f"1_{name}.pth",
        f"2_{name}.pth",
        f"{name}.pth",
        f"{name}_state.pth",
        f"{name}.log",
        f"{name}_loss.png",
        f"{name}_epe.png",
    ):
        assert (out / filename).is_file(), filename

    events = EventAccumulator(str(out / "runs" / name)).Reload().Tags()
    assert {"train/loss", "train/facial_epe", "train/lr", "val/facial_epe", "val/ffn_epe"} <= set(events["scalars"])
    assert {f"flow/{kind} (prediction | ground truth)" for kind in ("facial", "head", "expression")} <= set(
        events["images"]
    )
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    log = (out / f"{name}.log").read_text()
    assert "warning: running on cpu: --gpus 0 is ignored" in log
    assert "stage 1 (non-strict): loaded" in log and "left at initialisation: update_block_head" in log
    assert "validation facialflow/test at step 1" in log and "done:" in log
    assert "validation runs 2 iterations (--val_iters; 32 as the reference's), evaluate.py 12 by default" in log
    # the last step falls on --val_freq: {step}_{name}.pth is the final file itself, not a second copy
    assert os.path.samefile(out / f"2_{name}.pth", out / f"{name}.pth")
    assert os.path.samefile(out / f"2_{name}.json", out / f"{name}.json")
    assert all(k in metrics for k in ("loss", "facial_epe", "head_epe", "expression_epe", "val_facial_epe"))

    # 2 warm-up steps (lr <= 7e-5) move no weight by more than ~1.5e-4: the trained GMA
    # groups must still sit on the GMA values; freshly initialised weights would be far off.
    gma = {k[len("module.") :]: v for k, v in torch.load(files["gma"], weights_only=True).items()}
    final = read_state_dict(out / f"{name}.pth")
    params = {n for n, _ in DecFlow().named_parameters()}
    trained = {key: value for key, value in gma.items() if key in params}
    torch.testing.assert_close({key: final[key] for key in trained}, trained, rtol=0, atol=1e-3)
    step1 = read_state_dict(out / f"1_{name}.pth")
    assert not torch.equal(step1["fnet.conv1.weight"], gma["fnet.conv1.weight"])  # but it trained

    # beside each weights file: its architecture, step and training arguments
    for weights, step in ((f"1_{name}.pth", 1), (f"{name}.pth", 2)):
        description = json.loads((out / weights).with_suffix(".json").read_text())
        assert description["config"] == {
            "num_heads": 1,
            "position_only": False,
            "position_and_content": False,
            "dropout": 0.0,
        }
        assert description["step"] == step and description["training"]["name"] == name
        assert description["training"]["lr"] == 0.000125 and description["training"]["image_size"] == [128, 128]


def test_stage2_trains_exactly_the_frozen_set(files, stage1):
    stage1_out, _ = stage1
    out = files["base"] / "stage2"
    start = stage1_out / "decflow-facialflownet-part1.pth"
    run(
        scaled(
            SEED_PART2,
            output=str(out),
            restore_ckpt=str(start),
            root=str(files["root"]),
            num_steps="2",
            val_freq="2",
            **SMALL,
        )
    )
    before, after = read_state_dict(start), read_state_dict(out / "decflow.pth")
    model = DecFlow()
    set_trainable(model, 2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert sum(p.numel() for n, p in model.named_parameters() if n in trainable) == 3_760_193
    for key in frozen:
        assert torch.equal(before[key], after[key]), f"frozen parameter {key} changed"
    changed = [k for k in trainable if not torch.equal(before[k], after[k])]
    assert {k.split(".")[0] for k in changed} == {"update_block_head", "change_dim"}
    assert len(changed) == len(trainable), sorted(trainable - set(changed))
    assert "stage 2 (strict): loaded" in (out / "decflow.log").read_text()


def test_resume_reproduces_an_uninterrupted_run(files):
    common = tiny_train_args(
        frozen=False,
        stage="facialflow",
        root=files["root"],
        restore_ckpt=files["gma"],
        iters=2,
        num_steps=2,
        val_freq=2,
        print_freq=1,
        lr="0.001",
    )
    out_a, out_b = files["base"] / "resume_a", files["base"] / "resume_b"
    run(common + ["--name", "a", "--output", str(out_a)])
    # slot 1: stop after step 1 (as a time-limited job would)
    run(common + ["--name", "b", "--output", str(out_b), "--stop_at", "1"])
    assert torch.load(out_b / "b_state.pth", weights_only=True)["step"] == 1
    assert not (out_b / "b.pth").exists()
    # slot 2: --resume (this run: {output}/{name}_state.pth) finishes
    run(common + ["--name", "b", "--output", str(out_b), "--resume"])
    a, b = read_state_dict(out_a / "a.pth"), read_state_dict(out_b / "b.pth")
    assert a.keys() == b.keys()
    torch.testing.assert_close(_as_double(a), _as_double(b), rtol=0, atol=1e-6)
    state_a = torch.load(out_a / "a_state.pth", weights_only=True)
    state_b = torch.load(out_b / "b_state.pth", weights_only=True)
    assert state_a["step"] == state_b["step"] == 2
    assert state_a["scheduler"]["last_epoch"] == state_b["scheduler"]["last_epoch"] == 2
    log = (out_b / "b.log").read_text()
    assert "stopped by --stop_at after step 1" in log and "resuming" in log and log.count("done:") == 1


def test_sigint_saves_state_and_exits(files, monkeypatch):
    original = training_loop.train_step

    def interrupted_step(*args, **kwargs):
        result = original(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(training_loop, "train_step", interrupted_step)
    out = files["base"] / "sigint"
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where pytest runs as a background job
    with pytest.raises(SystemExit) as exc:  # stage 2 from random weights: cheap steps
        run(tiny_train_args(name="s", output=out, root=files["root"], iters=2, num_steps=3))
    assert exc.value.code == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    assert torch.load(out / "s_state.pth", weights_only=True)["step"] == 1
    assert "interrupted by a signal after step 1" in (out / "s.log").read_text()
    assert not (out / "s.pth").exists()


def test_nonfinite_loss_skips_then_aborts(files, monkeypatch):
    original = training_step.sequence_loss

    def nan_loss(*args, **kwargs):
        loss, metrics = original(*args, **kwargs)
        return loss * float("nan"), {**metrics, "loss": float("nan")}

    monkeypatch.setattr(training_step, "sequence_loss", nan_loss)
    out = files["base"] / "nan"
    with pytest.raises(SystemExit) as exc:
        run(tiny_train_args(name="n", output=out, root=files["root"], iters=2, num_steps=5, max_nonfinite=2))
    assert "aborting at step 2" in str(exc.value.code)
    assert "step 1: non-finite loss" in (out / "n.log").read_text()
    assert not (out / "n.pth").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num_steps", "x"], "argument --num_steps: invalid int value: 'x'"),
        (["--stage", "sintel"], "argument --stage: invalid choice: 'sintel'"),
        (["--no_such_option"], "unrecognized arguments: --no_such_option"),
        (["--lr", "-1"], "--lr must be a positive number, got -1.0"),
    ],
)
def test_a_bad_argument_is_one_line_without_the_usage_block(argv, message, tmp_path, capsys):
    """argparse's own errors and check_args's: `train.py: error: ...` alone on stderr, exit code 2."""
    with pytest.raises(SystemExit) as exc:
        exit_on_error(lambda: run([*argv, "--output", str(tmp_path / "out")]))
    assert exc.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and ": error: " in lines[0] and message in lines[0], captured.err
    assert "usage:" not in captured.err and captured.out == "" and not (tmp_path / "out").exists()


def test_resume_continues_this_run_and_resume_auto_may_start_fresh(files, tmp_path, capsys):
    """A bare --resume with a mistyped --name is a one-line error naming the missing state file;
    `--resume auto` (job scripts) starts fresh when there is none, and continues when there is."""
    out = tmp_path / "out"
    argv = tiny_train_args(root=files["root"], output=out, num_steps=2)
    with pytest.raises(SystemExit) as exc:
        exit_on_error(lambda: run([*argv, "--name", "ghostt", "--resume"]))
    assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        f"error: --resume: nothing to continue, no training state {out / 'ghostt_state.pth'} (check --name and "
        "--output; --resume auto starts fresh when there is none)"
    )
    assert not out.exists()
    run([*argv, "--name", "ghost", "--resume", "auto", "--stop_at", "1"])
    run([*argv, "--name", "ghost", "--resume", "auto"])
    log = (out / "ghost.log").read_text()
    assert f"--resume auto: no {out / 'ghost_state.pth'} yet, starting fresh" in log
    assert f"resuming {out / 'ghost_state.pth'} at step 1" in log and log.count("done:") == 1


def test_missing_restore_ckpt_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run(["--restore_ckpt", str(tmp_path / "nope.pth"), "--output", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--restore_ckpt: file not found" in err and "Traceback" not in err


@pytest.mark.parametrize("problem", ["no root", "no train split", "no validation split"])
def test_a_wrong_root_stops_before_anything_is_built(problem, files, tmp_path, capsys):
    """One line, exit 2, nothing printed before it (no model, no download) and no file of the run."""
    root = {"no root": tmp_path / "missing", "no train split": tmp_path, "no validation split": files["root"]}[problem]
    out = tmp_path / "checkpoints"
    out.mkdir()
    argv = ["--name", "w", "--output", str(out), "--root", str(root), "--batch_size", "1", "--offline", *CPU]
    if problem == "no validation split":  # the dataset has train and test splits only
        argv += ["--validation", "facialflow", "--val_split", "val"]
    with pytest.raises(SystemExit) as exc:
        exit_on_error(lambda: run(argv))
    assert exc.value.code == 2
    captured = capsys.readouterr()
    missing = {
        "no root": root,
        "no train split": root / "image/facial/train",
        "no validation split": root / "image/facial/val",
    }
    assert captured.err.startswith("error: ") and str(missing[problem]) in captured.err
    assert captured.err.count("\n") == 1 and len(captured.err) < 200 and captured.out == ""
    assert list(out.iterdir()) == []  # no w.log, no runs/w, no weights or state


def test_a_start_that_fails_after_the_model_is_built_leaves_no_file(files, tmp_path, capsys):
    """A --restore_ckpt that is no checkpoint fails once the model exists: still no log, no runs/, no weights."""
    garbage = tmp_path / "stage1.pth"
    garbage.write_bytes(b"not weights")
    out = tmp_path / "checkpoints"
    out.mkdir()
    argv = ["--name", "w", "--output", str(out), "--root", str(files["root"]), "--restore_ckpt", str(garbage)]
    with pytest.raises(SystemExit) as exc:
        exit_on_error(lambda: run([*argv, "--frozen", "--batch_size", "1", "--offline", *CPU]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {garbage}: not a PyTorch checkpoint") and err.count("\n") == 1
    assert list(out.iterdir()) == []


def test_sampler_resumes_and_shards():
    full = ResumableSampler(7, 2, seed=3)
    stream = list(itertools.islice(iter(full), 30))
    resumed = list(itertools.islice(iter(ResumableSampler(7, 2, seed=3, start_batch=5)), 20))
    assert resumed == stream[10:30]
    assert len(full) == 6  # 3 whole batches of 2 per epoch, the 7th pair dropped
    epoch0 = [i for i, _ in stream[:6]]
    assert len(set(epoch0)) == 6
    ranks = [
        [i for i, _ in itertools.islice(iter(ResumableSampler(7, 1, seed=3, rank=r, world_size=2)), 3)]
        for r in range(2)
    ]
    assert not set(ranks[0]) & set(ranks[1])


def test_torchrun_two_processes_gloo(files):
    """The real torchrun launcher with 2 gloo processes and 2 steps (about 15 s: two processes import torch
    and build the model)."""
    out = files["base"] / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(ROOT / "train.py"),
        *scaled(
            SEED_PART1,
            name="ddp",
            output=str(out),
            restore_ckpt=str(files["gma"]),
            root=str(files["root"]),
            num_steps="2",
            val_freq="2",
            gpus="",
            mixed_precision="",
            **{**SMALL, "batch_size": "2", "val_max_pairs": "2"},
        ),
    ]
    cmd.remove("--gpus")
    cmd.remove("--mixed_precision")
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for filename in ("2_ddp.pth", "ddp.pth", "ddp_state.pth", "ddp.log"):
        assert (out / filename).is_file(), filename
    log = (out / "ddp.log").read_text()
    assert "2 processes (DistributedDataParallel)" in log and log.count("done:") == 1
    assert set(read_state_dict(out / "ddp.pth")) == set(DecFlow().state_dict())


@pytest.mark.parametrize("length, world_size, batch", [(10, 2, 2), (13, 2, 3), (29, 4, 2), (9, 3, 1)])
def test_processes_split_the_global_batch_of_one_process(length: int, world_size: int, batch: int) -> None:
    """Under torchrun each of `world_size` processes takes `batch` pairs (train.py: --batch_size //
    world_size); at every step their batches together are the one process's batch of
    world_size * batch, pair for pair and with the same augmentation seeds, over several epochs.
    (Trained values are not compared with one process: DDP averages the gradients, but each
    process's batch norm sees its own share.)"""
    steps = 3 * (length // (world_size * batch))  # three epochs
    single = list(
        itertools.islice(iter(ResumableSampler(length, world_size * batch, seed=5)), steps * world_size * batch)
    )
    ranks = [
        list(
            itertools.islice(
                iter(ResumableSampler(length, batch, seed=5, rank=r, world_size=world_size)), steps * batch
            )
        )
        for r in range(world_size)
    ]
    for step in range(steps):
        together = sorted(pair for rank in ranks for pair in rank[step * batch : (step + 1) * batch])
        assert together == sorted(single[step * world_size * batch : (step + 1) * world_size * batch]), step


def _bn_stats(weights: dict) -> dict:
    return {k: v for k, v in weights.items() if k.startswith("cnet.") and k.endswith("running_mean")}


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_batchnorm_statistics_follow_freeze_bn(files, freeze_bn):
    out = files["base"] / f"bn_{freeze_bn}"
    run(
        tiny_train_args(
            frozen=False,
            stage="facialflow",
            root=files["root"],
            restore_ckpt=files["gma"],
            iters=2,
            val_freq=10,
            name="bn",
            output=out,
            freeze_bn=freeze_bn,
        )
    )
    before, after = _bn_stats(read_state_dict(files["gma"])), _bn_stats(read_state_dict(out / "bn.pth"))
    assert before and before.keys() == after.keys()
    unchanged = all(torch.equal(before[k], after[k]) for k in before)
    # the reference keeps BatchNorm in training mode (statistics update); --freeze_bn keeps them fixed
    assert unchanged == freeze_bn


def test_optimiser_and_schedule_follow_the_recipe(files):
    out = files["base"] / "recipe"
    argv = tiny_train_args(
        frozen=False,
        stage="facialflow",
        root=files["root"],
        restore_ckpt=files["gma"],
        iters=2,
        num_steps=3,
        val_freq=10,
        name="recipe",
        output=out,
        lr="0.000125",
        wdecay="0.00001",
    )
    run(argv)
    state = torch.load(out / "recipe_state.pth", weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    assert group["eps"] == 1e-8 and group["weight_decay"] == 1e-5
    # the reference schedule, rebuilt by hand: OneCycle over num_steps + 100, 5 % warm-up, linear
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=0.000125, weight_decay=1e-5, eps=1e-8)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.000125, total_steps=3 + 100, pct_start=0.05, cycle_momentum=False, anneal_strategy="linear"
    )
    for _ in range(3):
        optimizer.step()
        schedule.step()
    assert state["scheduler"]["total_steps"] == 103
    assert group["lr"] == pytest.approx(schedule.get_last_lr()[0], rel=1e-12)


def test_seed_recipe_with_mixed_precision_and_validation_resumes(files):
    """The seed flags as written (`--validation facialflow --mixed_precision`), cut by --stop_at and
    resumed: the state file holds plain values only and the run ends with the same weights as an
    uninterrupted one (bfloat16 where this CPU has it natively, else float32 with a warning)."""

    def argv(name: str, out) -> list[str]:
        return scaled(
            SEED_PART1,
            name=name,
            output=str(out),
            restore_ckpt=str(files["gma"]),
            root=str(files["root"]),
            num_steps="2",
            val_freq="2",
            **SMALL,
        )

    out_a, out_b = files["base"] / "seed_a", files["base"] / "seed_b"
    run(argv("a", out_a))
    run(argv("b", out_b) + ["--stop_at", "1"])
    state = torch.load(out_b / "b_state.pth", weights_only=True)  # no dataset object in the arguments
    assert state["step"] == 1 and state["args"]["validation"] == ["facialflow"] and state["args"]["mixed_precision"]
    run(argv("b", out_b) + ["--resume"])
    a, b = read_state_dict(out_a / "a.pth"), read_state_dict(out_b / "b.pth")
    torch.testing.assert_close(_as_double(a), _as_double({key: b[key] for key in a}), rtol=0, atol=1e-6)


def test_bad_optimiser_values_are_one_line_errors(tmp_path, capsys):
    for flag, value in (("--lr", "-0.001"), ("--wdecay", "-1"), ("--clip", "0"), ("--gamma", "1.5")):
        with pytest.raises(SystemExit) as exc:
            run([flag, value, "--output", str(tmp_path)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert flag in err and "Traceback" not in err


def test_impossible_model_options_are_one_line_errors(tmp_path, capsys):
    """train.py checks its model options as evaluate.py and get_flow.py do (core.cli.model_config)."""
    for argv, message in (
        (["--position_only", "--position_and_content"], "mutually exclusive"),
        (["--num_heads", "0"], "--num_heads must be >= 1"),
        (["--dropout", "1.5"], "--dropout must be in [0, 1]"),
    ):
        with pytest.raises(SystemExit) as exc:
            run([*argv, "--output", str(tmp_path)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()[-1]) < 200


def test_every_architecture_field_is_a_train_option_and_a_resume_check():
    options = {option for action in train.get_args_parser()._actions for option in action.option_strings}
    for field in dataclasses.fields(DecFlowConfig):
        assert f"--{field.name}" in options and field.name in RESUME_MUST_MATCH, field.name


def test_the_config_records_the_arguments_as_the_namespace_did():
    """A TrainConfig holds every option, and gives back, for state files and the weights' .json,
    exactly the arguments' plain values (lists as argparse gives them): old state files still resume."""
    args = train.get_args_parser().parse_args(
        ["--gpus", "0", "1", "--validation", "facialflow", "--image_size", "160", "128", "--frozen"]
    )
    config = train.config_from_args(args)
    assert plain_arguments(config) == vars(args)
    assert config.image_size == (160, 128) and config.gpus == (0, 1) and config.training_stage == 2
    assert config.architecture == DecFlowConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0
    args.unknown_option = 1  # an option the parser gained but TrainConfig lacks is not dropped silently
    with pytest.raises(TypeError, match="unknown_option"):
        train.config_from_args(args)


def test_help_states_each_default_once():
    parser = train.get_args_parser()
    formatter = parser.formatter_class(prog="train.py")
    for action in parser._actions:
        text = formatter._get_help_string(action) or ""
        assert len(re.findall(r"\(default[: ]", text)) <= 1, (action.option_strings, text)
    device = next(a for a in parser._actions if "--device" in a.option_strings)
    lr = next(a for a in parser._actions if "--lr" in a.option_strings)
    assert "(default: None)" not in formatter._get_help_string(device)
    assert formatter._get_help_string(lr).endswith("(default: %(default)s)")


def test_stale_temporaries_of_a_killed_save_are_removed(files, tmp_path):
    out = tmp_path / "stale"
    out.mkdir()
    stale = out / ".s_state.pth.abc123xy.tmp"
    stale.write_bytes(b"\0" * 64)
    run(tiny_train_args(name="s", output=out, root=files["root"], iters=2))
    assert not stale.exists() and "left by an interrupted save" in (out / "s.log").read_text()


def test_output_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for output in (blocker, blocker / "sub"):
        with pytest.raises(SystemExit) as exc:
            run(["--output", str(output)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "--output" in err and "a file is in the way" in err and "Traceback" not in err


def test_damaged_training_state_is_refused(files, tmp_path):
    out = tmp_path / "damaged"
    argv = tiny_train_args(name="d", output=out, root=files["root"], iters=2, num_steps=2)
    run(argv + ["--stop_at", "1"])
    state_path = out / "d_state.pth"
    state = torch.load(state_path, weights_only=True)
    first = next(iter(state["optimizer"]["state"].values()))
    first["exp_avg"].view(-1)[0] = float("nan")  # what flipped bytes inside the zip can do
    torch.save(state, state_path)
    with pytest.raises(SystemExit) as exc:
        run(argv + ["--resume"])
    message = str(exc.value.code)
    assert str(state_path) in message and "damaged" in message and "exp_avg" in message
