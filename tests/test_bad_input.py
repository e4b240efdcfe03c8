"""Bad inputs and faults through the real entry points: nothing a user owns is overwritten,
nothing damaged is scored, and every bad file gives one line (`error: ...`, exit code 2)
instead of a traceback. (Issue 21: one test per class of probe.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import get_flow
import train
from core.checkpoint import atomic_save, description_path, save_checkpoint
from core.cli import exit_on_error
from core.inference import FlowEstimator
from core.network import DecFlow
from tests.train_helpers import ROOT, TRAIN_DATASET, run, subprocess_env, tiny_train_args

SCRIPTS = {"train.py": train, "evaluate.py": evaluate, "get_flow.py": get_flow}
TINY_TRAIN = tiny_train_args(print_freq=1)


def cli(script: str, *argv: str, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Run a script as its command line does (in this process); returns the exit code and the
    last stderr line, after checking that no traceback was printed."""
    module = SCRIPTS[script]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        exit_on_error(lambda: module.main(module.get_args_parser().parse_args(list(argv))))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    return stop.value.code, lines[-1] if lines else ""


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def garble_jpeg(path: Path) -> None:
    """Garbles 16 bytes in the middle of a JPEG's image data (libjpeg: "Corrupt JPEG data")."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(range(17, 65, 3))
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def data(tmp_path_factory, synthetic_dataset) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bad_input")
    root = synthetic_dataset(subjects=1, frames=3, size=(128, 128), seed=3, splits=("train", "test"))
    torch.manual_seed(0)
    model = DecFlow()
    weights = base / "model.pth"
    save_checkpoint(model, weights, description={"step": 1})
    return {"base": base, "root": root, "weights": weights}


@pytest.fixture()
def dataset_copy(data, tmp_path) -> Path:
    root = tmp_path / "FacialFlowNet"
    shutil.copytree(data["root"], root)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_dataset) -> dict[str, Path]:
    """One step of train.py on 160x160 frames at --image_size 160 160 (the frames get upscaled)."""
    base = tmp_path_factory.mktemp("trained")
    root = synthetic_dataset(**TRAIN_DATASET)
    out = base / "out"
    argv = tiny_train_args(name="run", output=out, root=root, print_freq=1, image_size=(160, 160))
    run(argv)
    return {"root": root, "out": out, "argv": argv}


# ------------------------------------------------------------------ 1. an output is never an input
def test_an_output_that_is_an_input_is_refused(data, tmp_path, capsys):
    weights = tmp_path / "model.pth"
    shutil.copy(data["weights"], weights)
    shutil.copy(description_path(data["weights"]), description_path(weights))
    link = tmp_path / "results.json"
    link.symlink_to(weights)
    for target in (weights, link, description_path(weights)):
        code, line = cli(
            "evaluate.py",
            "--model",
            str(weights),
            "--root",
            str(data["root"]),
            "--device",
            "cpu",
            "--output_json",
            str(target),
            capsys=capsys,
        )
        assert code == 2 and line.startswith("evaluate.py: error: --output_json") and "input" in line
    frame = sorted(data["root"].rglob("*.jpg"))[0]
    code, line = cli(
        "evaluate.py", "--method", "zero", "--root", str(data["root"]), "--output_json", str(frame), capsys=capsys
    )
    assert code == 2 and str(frame) in line and "dataset" in line
    # train: the final weights would replace --restore_ckpt
    code, line = cli(
        "train.py",
        "--name",
        "model",
        "--output",
        str(tmp_path),
        "--restore_ckpt",
        str(weights),
        "--root",
        str(data["root"]),
        *TINY_TRAIN,
        capsys=capsys,
    )
    assert code == 2 and str(weights) in line and "--restore_ckpt" in line
    # get_flow: --output is the --frames folder (its pictures would be frames of the next run)
    frames = tmp_path / "x"
    frames.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((32, 32, 3), len(name) * 9, np.uint8)).save(frames / name)
    before = tree(tmp_path)
    flow_run = ("get_flow.py", "--model", str(weights), "--iters", "1", "--device", "cpu")
    code, line = cli(*flow_run, "--frames", str(frames), "--output", str(frames), capsys=capsys)
    assert code == 2 and line == (
        f"get_flow.py: error: --output {frames} is the --frames folder: the pictures written there would be "
        "frames of the next run; choose another --output"
    )
    # get_flow: a pair list's image named like the pair's visualisation, in --output
    (frames / "n_flow.png").write_bytes((frames / "a.png").read_bytes())
    (tmp_path / "pairs.csv").write_text("name,image1,image2\nn,x/n_flow.png,x/b.png\n")
    before = tree(tmp_path)
    code, line = cli(*flow_run, "--pairs", str(tmp_path / "pairs.csv"), "--output", str(frames), capsys=capsys)
    assert code == 2 and "n_flow.png" in line and " is an input: refusing" in line and "input input" not in line
    assert tree(tmp_path) == before


# ------------------------------------------------------------------ 2. a run name is one path component
@pytest.mark.parametrize("name", ["../x", "/abs/path/x", "sub/run", "..", ""])
def test_train_name_must_be_one_path_component(name, data, tmp_path, capsys):
    out = tmp_path / "out"
    code, line = cli(
        "train.py", "--name", name, "--output", str(out), "--root", str(data["root"]), *TINY_TRAIN, capsys=capsys
    )
    assert code == 2 and ": error: --name" in line and "without folders" in line
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 3. get_flow: reruns replace their own files only
def test_get_flow_reruns_replace_their_own_files_and_never_another_inputs(data, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for emotion in ("happy", "sad"):
        (tmp_path / emotion / "subject001").mkdir(parents=True)
        for stem in ("0001", "0002"):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / emotion / "subject001" / f"{stem}.png"
            )
    out = tmp_path / "out"
    common = ("--model", str(data["weights"]), "--iters", "1", "--device", "cpu", "--output", str(out), "--save_flo")
    happy, sad = (("--frames", str(tmp_path / e / "subject001")) for e in ("happy", "sad"))
    assert get_flow.main(get_flow.get_args_parser().parse_args([*common, *happy])) == [
        out / "subject001_0001-0002_flow.png"
    ]
    assert get_flow.main(get_flow.get_args_parser().parse_args([*common, *sad])) == [
        out / "sad_subject001_0001-0002_flow.png"
    ]
    before = tree(out)
    assert len(before) == 8
    # a rerun on the same input replaces its own four files, says so, and leaves the other input's alone
    (out / "subject001_0001-0002_facial.flo").write_bytes(b"stale")
    capsys.readouterr()
    written = get_flow.main(get_flow.get_args_parser().parse_args([*common, *happy]))
    assert written == [out / "subject001_0001-0002_flow.png"]
    assert f"replacing 4 files of an earlier run on the same input in {out}" in capsys.readouterr().out
    assert tree(out) == before  # the stale file replaced by the same flow; sad's files untouched
    # a file in the way that no run on this input wrote (no visualisation records its input) needs --overwrite
    (out / "subject001_0001-0002_flow.png").unlink()
    code, line = cli("get_flow.py", *common, *happy, capsys=capsys)
    assert code == 2 and "subject001_0001-0002_facial.flo" in line and "--overwrite" in line and len(line) < 200
    written = get_flow.main(get_flow.get_args_parser().parse_args([*common, *happy, "--overwrite"]))
    assert written == [out / "subject001_0001-0002_flow.png"] and tree(out) == before


def test_get_flow_replaces_a_symbolic_link_and_never_writes_its_target(data, tmp_path):
    """Every output goes to a temporary file in --output, then a rename: a link in the way is replaced."""
    rng = np.random.default_rng(1)
    frames = tmp_path / "seq"
    frames.mkdir()
    for stem in ("0001", "0002"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(frames / f"{stem}.png")
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    targets = {}
    for suffix in ("_flow.png", "_facial.npy"):
        target = outside / f"precious{suffix}"
        target.write_bytes(b"not yours")
        (out / f"seq_0001-0002{suffix}").symlink_to(target)
        targets[target] = b"not yours"
    argv = ["--model", str(data["weights"]), "--iters", "1", "--device", "cpu", "--output", str(out)]
    frames_argv = ["--frames", str(frames), "--save_format", "npy", "--overwrite"]  # the links are in the way
    get_flow.main(get_flow.get_args_parser().parse_args([*argv, *frames_argv]))
    assert {target: target.read_bytes() for target in targets} == targets  # no target written through
    for suffix in ("_flow.png", "_facial.npy", "_head.npy", "_expression.npy"):
        path = out / f"seq_0001-0002{suffix}"
        assert path.is_file() and not path.is_symlink(), path
    assert np.load(out / "seq_0001-0002_facial.npy").shape == (32, 32, 2)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary left


# ------------------------------------------------------------------ 4. checksums
def test_changed_weights_with_finite_values_are_refused(data, tmp_path, capsys):
    weights = tmp_path / "model.pth"
    shutil.copy(data["weights"], weights)
    shutil.copy(description_path(data["weights"]), description_path(weights))
    assert len(json.loads(description_path(weights).read_text())["sha256"]) == 64
    state = torch.load(weights, weights_only=True)
    state["module.fnet.conv1.weight"].view(-1)[0] += 0.5  # finite, and no load check can see it
    torch.save(state, weights)
    pair = [str(ROOT / "assets" / "demo" / f"frame{i}.jpg") for i in (1, 2)]
    code, line = cli(
        "get_flow.py",
        "--model",
        str(weights),
        "--image1",
        pair[0],
        "--image2",
        pair[1],
        "--output",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        capsys=capsys,
    )
    assert code == 2 and str(weights) in line and "SHA-256" in line and str(description_path(weights)) in line
    assert not (tmp_path / "out").exists()


def test_changed_training_state_is_refused_on_resume(trained, tmp_path, capsys):
    state_path = trained["out"] / "run_state.pth"
    state = torch.load(state_path, weights_only=True)
    assert len(state["sha256"]) == 64
    copy = tmp_path / "run_state.pth"
    state["model"]["module.update_block_head.gru.convz1.weight"].view(-1)[0] += 0.5
    torch.save(state, copy)
    code, line = cli("train.py", *trained["argv"], "--resume", str(copy), capsys=capsys)
    assert code == 2 and str(copy) in line and "checksum" in line
    # an untouched state resumes (the checksum survives torch.save/torch.load)
    run([*trained["argv"], "--output", str(tmp_path / "resumed"), "--resume", str(state_path)])
    resumed = torch.load(tmp_path / "resumed" / "run.pth", weights_only=True)
    final = torch.load(trained["out"] / "run.pth", weights_only=True)  # the state is the run's last step
    assert resumed.keys() == final.keys() and all(torch.equal(resumed[k], final[k]) for k in final)


def test_the_authors_files_without_a_checksum_load_as_before(data, tmp_path):
    """A bare state dict (no description, no checksum) gives the flow of the described file."""
    bare = tmp_path / "authors.pth"
    torch.save(torch.load(data["weights"], weights_only=True), bare)
    for weights, out in ((bare, "bare"), (data["weights"], "described")):
        get_flow.main(
            get_flow.get_args_parser().parse_args(
                ["--model", str(weights), "--iters", "1", "--device", "cpu", "--save_format", "npy"]
                + ["--output", str(tmp_path / out)]
            )
        )
    names = sorted(path.name for path in (tmp_path / "described").glob("*.npy"))
    assert len(names) == 3 and names == sorted(path.name for path in (tmp_path / "bare").glob("*.npy"))
    for name in names:
        np.testing.assert_array_equal(np.load(tmp_path / "bare" / name), np.load(tmp_path / "described" / name))


# ------------------------------------------------------------------ 5. non-finite weights and flows
def test_non_finite_weights_are_refused_naming_the_tensor(data, tmp_path, capsys):
    state = torch.load(data["weights"], weights_only=True)
    state["module.update_block.flow_head.conv2.weight"].view(-1)[3] = float("nan")
    bad = tmp_path / "nan.pth"
    torch.save(state, bad)
    for script, argv in (
        ("get_flow.py", ["--output", str(tmp_path / "out")]),
        ("evaluate.py", ["--root", str(data["root"]), "--output_json", str(tmp_path / "r.json")]),
    ):
        code, line = cli(script, "--model", str(bad), "--device", "cpu", *argv, capsys=capsys)
        assert code == 2 and str(bad) in line and "update_block.flow_head.conv2.weight" in line
    assert list(tmp_path.iterdir()) == [bad]


def test_non_finite_flow_is_never_written_or_scored(data, tmp_path, capsys):
    state = torch.load(data["weights"], weights_only=True)
    state["module.update_block.flow_head.conv2.bias"].fill_(3e38)  # finite weights, infinite flow
    huge = tmp_path / "huge.pth"
    torch.save(state, huge)
    code, line = cli(
        "get_flow.py",
        "--model",
        str(huge),
        "--iters",
        "1",
        "--device",
        "cpu",
        "--save_flo",
        "--output",
        str(tmp_path / "out"),
        capsys=capsys,
    )
    assert code == 2 and "non-finite" in line and "frame1.jpg -> " in line and "frame2.jpg" in line
    assert not any((tmp_path / "out").iterdir())
    code, line = cli(
        "evaluate.py",
        "--model",
        str(huge),
        "--iters",
        "1",
        "--device",
        "cpu",
        "--no_progress",
        "--root",
        str(data["root"]),
        "--output_json",
        str(tmp_path / "r.json"),
        capsys=capsys,
    )
    assert code == 2 and "non-finite" in line and "pair 0" in line and "0001.jpg" in line
    assert not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------ 6. damaged JPEGs
def test_a_damaged_jpeg_is_named_and_never_used(data, dataset_copy, tmp_path, capsys):
    frame = sorted((dataset_copy / "image" / "facial" / "test").rglob("*.jpg"))[1]
    garble_jpeg(frame)
    Image.open(frame).load()  # Pillow decodes it without a word
    code, line = cli("evaluate.py", "--method", "zero", "--root", str(dataset_copy), "--no_progress", capsys=capsys)
    assert code == 2 and str(frame) in line and "damaged JPEG" in line
    code, line = cli(
        "get_flow.py",
        "--model",
        str(data["weights"]),
        "--image1",
        str(frame),
        "--image2",
        str(frame),
        "--output",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        capsys=capsys,
    )
    assert code == 2 and str(frame) in line and "damaged JPEG" in line
    train_frames = sorted((dataset_copy / "image" / "facial" / "train").rglob("*.jpg"))
    for train_frame in train_frames:  # any first batch has one
        garble_jpeg(train_frame)
    code, line = cli(
        "train.py",
        "--name",
        "r",
        "--output",
        str(tmp_path / "t"),
        "--root",
        str(dataset_copy),
        *TINY_TRAIN,
        capsys=capsys,
    )
    assert code == 2 and line.startswith("error:") and "damaged JPEG" in line
    assert any(line.startswith(f"error: {train_frame}: ") for train_frame in train_frames)


# ------------------------------------------------------------------ 7. upscaled frames
def test_image_size_beyond_the_frames_is_said_at_start_up(trained):
    log = (trained["out"] / "run.log").read_text()
    lines = [line for line in log.splitlines() if "upscaled" in line]
    assert len(lines) == 1 and "--image_size 160 160" in lines[0] and "160x160" in lines[0]


# ------------------------------------------------------------------ 8. errors while reading a file
def _truncate_flows(root: Path, split: str) -> Path:
    """Truncates every facial flow of the split (any first batch has one); returns the first."""
    flows = sorted((root / "flow" / "facial" / split).rglob("*.flo"))
    for flow in flows:
        flow.write_bytes(flow.read_bytes()[:100])
    return flows[0]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_truncated_flo_stops_training_at_the_first_batch(workers, dataset_copy, tmp_path, capsys):
    _truncate_flows(dataset_copy, "train")
    argv = ["--name", "r", "--output", str(tmp_path / "t"), "--root", str(dataset_copy), *TINY_TRAIN]
    code, line = cli("train.py", *argv, "--num_workers", workers, capsys=capsys)
    assert code == 2 and re.fullmatch(
        rf"error: {re.escape(str(dataset_copy))}/flow/facial/train/\S+\.flo: truncated "
        r"\.flo file: header says 128x128 \(131084 bytes\) but the file has 100 bytes",
        line,
    ), line


def test_damaged_labels_during_evaluation_are_one_line(dataset_copy, capsys):
    flows = sorted((dataset_copy / "flow" / "facial" / "test").rglob("*.flo"))
    intact = {path: path.read_bytes() for path in flows}
    flow = _truncate_flows(dataset_copy, "test")
    code, line = cli("evaluate.py", "--method", "zero", "--root", str(dataset_copy), "--no_progress", capsys=capsys)
    assert code == 2 and line.startswith(f"evaluate.py: error: {flow}: truncated .flo")
    flow.write_bytes(np.zeros(3, np.float32).tobytes() + b"x" * 200)
    code, line = cli("evaluate.py", "--method", "zero", "--root", str(dataset_copy), "--no_progress", capsys=capsys)
    assert code == 2 and str(flow) in line
    for path, content in intact.items():
        path.write_bytes(content)
    mask = sorted((dataset_copy / "mask" / "test").rglob("*.npy"))[0]
    np.save(mask, np.array([{"a": 1}], dtype=object), allow_pickle=True)  # a pickled mask
    code, line = cli("evaluate.py", "--method", "zero", "--root", str(dataset_copy), "--no_progress", capsys=capsys)
    assert code == 2 and f"{mask}: a .npy array of Python objects, not of numbers" in line
    for kind, write in (
        ("a PNG image", lambda path: Image.new("L", (8, 8)).save(path, format="PNG")),
        ("a .flo flow file", lambda path: shutil.copy(next((dataset_copy / "flow").rglob("*.flo")), path)),
    ):  # another file under the mask's name: named for what it is, not numpy's allow_pickle advice
        write(mask)
        code, line = cli("evaluate.py", "--method", "zero", "--root", str(dataset_copy), "--no_progress", capsys=capsys)
        assert code == 2 and line.endswith(f"{mask}: not a .npy array but {kind}") and "pickle" not in line, line
    np.save(mask, np.zeros((64, 64), np.uint8))  # the wrong shape
    code, line = cli("evaluate.py", "--method", "zero", "--root", str(dataset_copy), "--no_progress", capsys=capsys)
    assert code == 2 and str(mask) in line and "does not match" in line


def test_bad_restore_ckpt_and_semantic_weights_are_one_line_at_start_up(data, tmp_path, capsys):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data["weights"].read_bytes()[:5000])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"<html>not found</html>")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, wrong)
    base = ["--name", "r", "--output", str(tmp_path / "t"), "--root", str(data["root"]), *TINY_TRAIN]
    for flag, path in (("--restore_ckpt", truncated), ("--restore_ckpt", wrong), ("--semantic_weights", garbage)):
        argv = [*base, flag, str(path)]
        if flag == "--semantic_weights":
            argv.remove("--frozen")  # stage 1 reads the ImageNet weights
        code, line = cli("train.py", *argv, capsys=capsys)
        assert code == 2 and line.startswith("error:") and str(path) in line


# ------------------------------------------------------------------ 9. --resume with a file that is not a state
class Payload:
    pass


def test_resume_with_a_non_plain_file_gives_the_model_message(data, tmp_path, capsys):
    unsafe = tmp_path / "unsafe_state.pth"
    torch.save({"step": 1, "args": {}, "optimizer": {}, "model": {}, "extra": Payload()}, unsafe)
    code, line = cli(
        "train.py",
        "--name",
        "r",
        "--output",
        str(tmp_path / "t"),
        "--root",
        str(data["root"]),
        *TINY_TRAIN,
        "--resume",
        str(unsafe),
        capsys=capsys,
    )
    assert code == 2 and str(unsafe) in line and "not loaded for safety" in line and "weights_only" not in line
    _, model_line = cli("get_flow.py", "--model", str(unsafe), "--device", "cpu", capsys=capsys)
    assert model_line.split(": error: ", 1)[1] in line  # the same words as for --model


# ------------------------------------------------------------------ 10. a malformed .json beside a checkpoint
@pytest.mark.parametrize("document", [{"config": "position_only"}, {"config": 3}, {"sha256": 5}, ["config"]])
def test_a_malformed_description_is_named(document, data, tmp_path, capsys):
    weights = tmp_path / "model.pth"
    shutil.copy(data["weights"], weights)
    description_path(weights).write_text(json.dumps(document))
    code, line = cli(
        "get_flow.py", "--model", str(weights), "--device", "cpu", "--output", str(tmp_path / "o"), capsys=capsys
    )
    assert code == 2 and str(description_path(weights)) in line


# ------------------------------------------------------------------ 11. messages name the right thing
def test_a_non_video_names_the_file_and_sizes_are_the_callers(data, tmp_path, capsys):
    still = tmp_path / "clip.mp4"
    shutil.copy(ROOT / "assets" / "demo" / "frame1.jpg", still)
    code, line = cli(
        "get_flow.py",
        "--model",
        str(data["weights"]),
        "--video",
        str(still),
        "--device",
        "cpu",
        "--output",
        str(tmp_path / "out"),
        capsys=capsys,
    )
    assert code == 2 and str(still) in line
    estimator = FlowEstimator(DecFlow().eval(), iters=1, device="cpu")
    with pytest.raises(ValueError, match=r"\(3, 100, 120\) vs \(3, 100, 130\)"):
        estimator(torch.zeros(3, 100, 120), torch.zeros(3, 100, 130))
    with pytest.raises(ValueError, match=r"\(4, 100, 120\)"):
        estimator(torch.zeros(4, 100, 120), torch.zeros(4, 100, 120))


# ------------------------------------------------------------------ 12. file modes follow the umask
def test_weights_and_descriptions_get_the_umask_mode(trained, tmp_path):
    log_mode = stat.S_IMODE((trained["out"] / "run.log").stat().st_mode)
    for name in ("run.pth", "run.json", "run_state.pth"):
        assert stat.S_IMODE((trained["out"] / name).stat().st_mode) == log_mode
    previous = os.umask(0o027)
    try:
        atomic_save({"x": torch.zeros(1)}, tmp_path / "x.pth")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "x.pth").stat().st_mode) == 0o640


# ------------------------------------------------------------------ no traceback reaches the user
def test_no_script_error_path_prints_a_traceback(data, dataset_copy, tmp_path):
    """The scripts as users run them: every error path ends in one `error:` line, exit code 2."""
    flow = _truncate_flows(dataset_copy, "train")
    _truncate_flows(dataset_copy, "test")
    nan = tmp_path / "nan.pth"
    state = torch.load(data["weights"], weights_only=True)
    state["module.fnet.conv1.weight"].view(-1)[0] = float("inf")
    torch.save(state, nan)
    train_base = ["--output", str(tmp_path / "t"), "--root", str(dataset_copy), *TINY_TRAIN]
    runs = [
        ("train.py", ["--name", "../x", *train_base]),
        ("train.py", ["--name", "r", *train_base, "--num_workers", "1"]),
        ("train.py", ["--name", "r", *train_base, "--restore_ckpt", str(nan)]),
        ("evaluate.py", ["--method", "zero", "--root", str(dataset_copy), "--no_progress"]),
        ("evaluate.py", ["--model", str(data["weights"]), "--output_json", str(data["weights"])]),
        ("get_flow.py", ["--model", str(nan), "--output", str(tmp_path / "g")]),
        ("get_flow.py", ["--model", str(data["weights"]), "--video", str(flow), "--output", str(tmp_path / "g")]),
    ]
    for script, argv in runs:
        proc = subprocess.run(
            [sys.executable, str(ROOT / script), *argv, *([] if script == "train.py" else ["--device", "cpu"])],
            cwd=tmp_path,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2, (script, argv, proc.stderr)
        assert "Traceback" not in proc.stderr, (script, argv, proc.stderr)
        assert "error:" in proc.stderr.strip().splitlines()[-1], (script, argv, proc.stderr)
