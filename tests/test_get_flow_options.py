"""The scripts' options checked against the model run by hand: get_flow's --warm_start, the default
iterations (the reference demo's 24; evaluate.py's 12, the reference evaluation's) and the
evaluation's padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

import evaluate
import get_flow
from core.datasets import FacialFlow
from core.inference import FlowEstimator, load_model
from core.network import DecFlowConfig
from core.utils.flow_io import read_flo

SIZE = (40, 48)  # padded to 128 x 128 by the estimator: cheap, and the warm start's low flows have one size


def _frames(folder: Path, count: int) -> list[np.ndarray]:
    """`count` frames of one random texture shifted 2 px right per frame (a real motion to follow)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    texture = rng.integers(0, 256, (SIZE[0], SIZE[1] + 2 * count, 3), dtype=np.uint8)
    frames = [np.ascontiguousarray(texture[:, 2 * (count - i) : 2 * (count - i) + SIZE[1]]) for i in range(count)]
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:04d}.png")
    return frames


def _estimator(checkpoint: Path, iters: int) -> FlowEstimator:
    model = load_model(checkpoint, config=DecFlowConfig(), device=torch.device("cpu"))
    return FlowEstimator(model, iters=iters, device="cpu", pad_mode="symmetric")


def _tensor(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frame).permute(2, 0, 1).float()


def _run(*argv: str) -> None:
    get_flow.main(get_flow.get_args_parser().parse_args([*argv, "--device", "cpu"]))


def test_warm_start_starts_each_pair_from_the_previous_pairs_low_flows(decflow_checkpoint: Path, tmp_path: Path):
    frames = _frames(tmp_path / "seq", 3)
    out = tmp_path / "out"
    argv = ("--model", str(decflow_checkpoint), "--frames", str(tmp_path / "seq"), "--iters", "2")
    _run(*argv, "--warm_start", "--save_format", "npy", "--output", str(out))
    estimator = _estimator(decflow_checkpoint, iters=2)
    first = estimator(_tensor(frames[0]), _tensor(frames[1]))
    warm = estimator(_tensor(frames[1]), _tensor(frames[2]), flow_init=(first.facial_low, first.head_low))
    cold = estimator(_tensor(frames[1]), _tensor(frames[2]))
    for kind in ("facial", "head"):
        written = np.load(out / f"seq_0001-0002_{kind}.npy")
        expected = getattr(warm, kind)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(written, expected, atol=1e-4)
        # the option matters: a cold start gives another flow
        assert np.abs(written - getattr(cold, kind)[0].permute(1, 2, 0).numpy()).max() > 1e-3
    # the first pair has no previous pair: a cold start
    np.testing.assert_allclose(
        np.load(out / "seq_0000-0001_facial.npy"), first.facial[0].permute(1, 2, 0).numpy(), atol=1e-4
    )


def test_get_flow_runs_24_iterations_by_default(decflow_checkpoint: Path, tmp_path: Path):
    """The reference demo's 24 iterations, checked on the flow (not only the parser): the file equals
    24 iterations run by hand and differs from 12."""
    frames = _frames(tmp_path / "seq", 2)
    out = tmp_path / "out"
    paths = [str(tmp_path / "seq" / f"{i:04d}.png") for i in range(2)]
    _run("--model", str(decflow_checkpoint), "--image1", paths[0], "--image2", paths[1], "--save_format", "npy",
         "--output", str(out))  # fmt: skip
    written = np.load(out / "seq_0000-0001_facial.npy")
    pair = (_tensor(frames[0]), _tensor(frames[1]))
    expected = _estimator(decflow_checkpoint, iters=24)(*pair).facial[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(written, expected, atol=1e-4)
    fewer = _estimator(decflow_checkpoint, iters=12)(*pair).facial[0].permute(1, 2, 0).numpy()
    assert np.abs(written - fewer).max() > 1e-3


def test_script_defaults_are_the_references(decflow_checkpoint: Path):
    """The reference evaluates FacialFlowNet at 12 iterations and runs its demo at 24 (get_flow's
    parser leaves --iters unset, so that --onnx can take the file's: its estimator says 24)."""
    assert evaluate.get_args_parser().parse_args([]).iters == 12
    args = get_flow.get_args_parser().parse_args(["--model", str(decflow_checkpoint), "--device", "cpu"])
    estimator, details = get_flow.build_estimator(args, str(decflow_checkpoint))
    assert estimator.iters == 24 and details.startswith("24 iterations")


def test_evaluation_pads_as_the_reference_bottom_and_both_sides(decflow_checkpoint: Path, synthetic_dataset) -> None:
    """Frames that need padding (132 x 138): evaluate.py's EPE is the one of frames padded by hand as
    the reference's FacialFlowNet evaluation does (replicate; height at the bottom, width split
    evenly), not of the demo's symmetric padding, and meta says which mode ran."""
    root = synthetic_dataset(subjects=1, frames=2, size=(132, 138), seed=0, splits=("test",))
    args = evaluate.get_args_parser().parse_args(
        ["--model", str(decflow_checkpoint), "--root", str(root), "--iters", "2", "--no_progress", "--device", "cpu"]
    )
    doc = evaluate.main(args)
    assert doc["meta"]["padding_mode"] == "exp" and doc["pairs"] == 1
    dataset = FacialFlow(None, split="test", dataset_root=root)
    frames, gt_path, mask_path = dataset.image_list[0], dataset.flow_facial_list[0], dataset.mask_list[0]
    images = [_tensor(np.asarray(Image.open(path).convert("RGB")))[None] for path in frames]
    model = load_model(decflow_checkpoint, config=DecFlowConfig(), device=torch.device("cpu"))
    gt, mask = read_flo(gt_path).astype(np.float64), np.load(mask_path).astype(bool)

    def epe_with(padding: tuple[int, int, int, int]) -> float:  # F.pad order: left, right, top, bottom
        padded = [F.pad(image, padding, mode="replicate") for image in images]
        with torch.inference_mode():
            flow = model.forward_unchecked(*padded, iters=2, test_mode=True).facial[0]
        left, top = padding[0], padding[2]
        flow = flow[:, top : top + 132, left : left + 138].permute(1, 2, 0).numpy()
        return float(np.sqrt(((flow - gt) ** 2).sum(axis=2))[mask].mean())

    reference, symmetric = epe_with((3, 3, 0, 4)), epe_with((3, 3, 2, 2))
    assert doc["facial"]["epe"] == pytest.approx(reference, rel=1e-4)
    assert abs(symmetric - reference) > 1e-3  # the two modes are told apart on these frames
