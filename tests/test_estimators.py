"""The estimator interface (core.inference.Estimator) and its one factory (core.estimators).

The base's padding and cropping are observed through a runner that returns its padded input
as flow (cropping must give the input back, pixel for pixel) and through a tiny ONNX file in
the export's format (inputs, outputs, metadata) whose graph slices its inputs the same way:
cheap stand-ins for the network and for the 100 s export of tests/test_export.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from core.errors import UserError
from core.estimators import EstimatorSpec, build_estimator
from core.inference import Estimator, FlowEstimator
from core.network import DecFlowConfig, DecFlowOutput
from core.onnx_runtime import (
    CONFIG_KEY,
    FORMAT,
    FORMAT_KEY,
    INPUT_NAMES,
    ITERS_KEY,
    OUTPUT_NAMES,
    SIZE_RULE_KEY,
    WEIGHTS_KEY,
    SizeRule,
)

REPO = Path(__file__).resolve().parents[1]
MODEL_OPTIONS = {"num_heads": 1, "position_only": False, "position_and_content": False}


class EchoRunner(Estimator):
    """Returns channels 0-1 of its padded images as flows and records the padded shapes it got."""

    def __init__(self, **options: Any) -> None:
        super().__init__(iters=1, **options)
        self.padded: list[tuple[int, ...]] = []

    def to_input(self, image: torch.Tensor) -> torch.Tensor:
        return image.float()

    def run(self, image1: torch.Tensor, image2: torch.Tensor, flow_init: Any) -> DecFlowOutput:
        self.padded.append(tuple(image1.shape))
        facial, head = image1[:, :2], image2[:, :2]
        low = facial[..., ::8, ::8]
        return DecFlowOutput(facial=facial, head=head, expression=facial - head, facial_low=low, head_low=low)

    def precision(self) -> str:
        return "echo"

    def model_options(self) -> dict[str, Any]:
        return {}


def pair(*shape: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(sum(shape))
    return tuple(torch.rand(*shape, generator=generator) * 255 for _ in range(2))


@pytest.mark.parametrize(
    "shape, pad_mode, padded",
    [
        ((3, 130, 150), "exp", (1, 3, 136, 152)),  # multiples of 8
        ((2, 3, 40, 90), "symmetric", (2, 3, 128, 128)),  # up to the 128 px minimum
        ((1, 3, 128, 136), "exp", (1, 3, 128, 136)),  # already fine: untouched
    ],
)
def test_the_base_pads_to_multiples_of_8_and_128_px_and_crops_back(shape, pad_mode, padded):
    runner = EchoRunner(pad_mode=pad_mode)
    image1, image2 = pair(*shape)
    out = runner(image1, image2)
    assert runner.padded == [padded]
    batched = (1, *shape) if len(shape) == 3 else shape
    assert out.facial.shape == out.head.shape == out.expression.shape == (batched[0], 2, *shape[-2:])
    # the crop takes back exactly the pixels the padding kept: the input itself
    assert torch.equal(out.facial, image1.reshape(batched)[:, :2])
    assert torch.equal(out.head, image2.reshape(batched)[:, :2])
    assert out.facial_low.shape == (batched[0], 2, padded[2] // 8, padded[3] // 8)  # not cropped


def test_the_base_checks_the_pair_before_running():
    runner = EchoRunner(pad_mode="exp")
    image = torch.zeros(3, 64, 64)
    with pytest.raises(ValueError, match=r"image1 and image2 differ in shape: \(3, 64, 64\) vs \(3, 64, 72\)"):
        runner(image, torch.zeros(3, 64, 72))
    with pytest.raises(ValueError, match=r"images must be \[3, H, W\] or \[B, 3, H, W\] RGB, got shape \(1, 64, 64\)"):
        runner(image[:1], image[:1])
    with pytest.raises(ValueError, match="non-finite"):
        runner(torch.full((3, 64, 64), float("nan")), image)
    assert runner.padded == []
    assert runner.description() == {"iters": 1, "padding_mode": "exp", "precision": "echo", "model_options": {}}


def test_a_weights_spec_builds_a_flow_estimator_that_runs_what_the_spec_says(decflow_checkpoint):
    spec = EstimatorSpec(weights=decflow_checkpoint, iters=2, device="cpu", alternate_corr=True, pad_mode="exp")
    estimator = build_estimator(spec)
    assert type(estimator) is FlowEstimator and estimator.device == torch.device("cpu")
    assert estimator.description() == {
        "iters": 2,
        "padding_mode": "exp",
        "precision": "float32",
        "model_options": {**MODEL_OPTIONS, "alternate_corr": True},
    }
    out = estimator(*pair(3, 40, 52))
    assert out.facial.shape == (1, 2, 40, 52) and out.facial_low.shape == (1, 2, 16, 16)
    assert build_estimator(EstimatorSpec(weights=decflow_checkpoint, device="cpu")).iters == 24  # DEMO_ITERS


def test_the_factory_says_what_is_wrong_with_a_spec(decflow_checkpoint, tmp_path):
    missing = tmp_path / "missing.pth"
    with pytest.raises(UserError, match=f"checkpoint {missing} not found"):
        build_estimator(EstimatorSpec(weights=missing, device="cpu"))
    other = EstimatorSpec(weights=decflow_checkpoint, config=DecFlowConfig(num_heads=2), device="cpu")
    with pytest.raises(UserError, match=r"decflow_seeded.pth does not fit DecFlow: 3 shape mismatches: att\.to_qk"):
        build_estimator(other)
    with pytest.raises(ValueError, match="weights or an ONNX file, not both"):
        EstimatorSpec(weights=decflow_checkpoint, onnx=tmp_path / "a.onnx")


def test_no_weights_is_the_untrained_network_on_the_device():
    estimator = build_estimator(EstimatorSpec(device="cpu", iters=1))
    assert type(estimator) is FlowEstimator and not estimator.model.training
    assert next(estimator.model.parameters()).device == torch.device("cpu")


def write_slicing_export(path: Path, *, iters: int, max_side: int | None = None) -> None:
    """An ONNX file in the export's format whose graph returns channels 0-1 of each image as the
    facial and head flows and their difference as the expression flow."""
    onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install -r requirements-export.txt)")
    helper = onnx.helper
    constants = [
        helper.make_tensor(name, onnx.TensorProto.INT64, [1], [value])
        for name, value in (("start", 0), ("end", 2), ("axis", 1))
    ]
    nodes = [
        helper.make_node("Slice", [INPUT_NAMES[0], "start", "end", "axis"], [OUTPUT_NAMES[0]]),
        helper.make_node("Slice", [INPUT_NAMES[1], "start", "end", "axis"], [OUTPUT_NAMES[1]]),
        helper.make_node("Sub", list(OUTPUT_NAMES[:2]), [OUTPUT_NAMES[2]]),
    ]
    image = ["batch", 3, "height", "width"]
    graph = helper.make_graph(
        nodes,
        "slices",
        [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, image) for name in INPUT_NAMES],
        [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in OUTPUT_NAMES],
        initializer=constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # read by every onnxruntime that runs opset 18
    metadata = {
        FORMAT_KEY: FORMAT,
        ITERS_KEY: str(iters),
        WEIGHTS_KEY: "0" * 64,
        SIZE_RULE_KEY: SizeRule(max_side=max_side).to_json(),
        CONFIG_KEY: json.dumps({**MODEL_OPTIONS, "dropout": 0.0}),
    }
    helper.set_model_props(model, metadata)
    onnx.save(model, str(path))


def test_an_onnx_spec_builds_an_onnx_estimator_that_pads_and_crops_as_the_base(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -r requirements-export.txt)")
    path = tmp_path / "slices.onnx"
    write_slicing_export(path, iters=3)
    estimator = build_estimator(EstimatorSpec(onnx=path))
    assert type(estimator).__name__ == "OnnxFlowEstimator" and isinstance(estimator, Estimator)
    assert estimator.description() == {
        "iters": 3,
        "padding_mode": "symmetric",
        "precision": "float32 (onnxruntime)",
        "model_options": {**MODEL_OPTIONS, "alternate_corr": False},
    }
    image1, image2 = pair(2, 3, 45, 131)  # odd sides: padded to 128 x 136 and cropped back
    out = estimator(image1, image2)
    assert out.facial.shape == out.head.shape == out.expression.shape == (2, 2, 45, 131)
    assert torch.equal(out.facial, image1[:, :2]) and torch.equal(out.head, image2[:, :2])
    assert out.facial_low is None and out.head_low is None
    with pytest.raises(UserError, match=f"{path} was exported with 3 iterations; --iters 12 differs"):
        build_estimator(EstimatorSpec(onnx=path, iters=12))
    with pytest.raises(ValueError, match=f"{path}: an ONNX export has no warm start"):
        estimator(image1, image2, flow_init=torch.zeros(2, 2, 16, 17))
    bounded = tmp_path / "bounded.onnx"
    write_slicing_export(bounded, iters=3, max_side=128)
    with pytest.raises(ValueError, match=r"at most 128 px, got shape \(2, 3, 128, 136\) after padding"):
        build_estimator(EstimatorSpec(onnx=bounded))(image1, image2)


def test_the_factory_imports_and_builds_pytorch_estimators_without_onnxruntime(decflow_checkpoint, tmp_path):
    """onnxruntime is optional: without it (an import that fails) only an ONNX spec fails, saying what to install."""
    script = f"""
import sys
sys.modules["onnxruntime"] = None  # import onnxruntime raises ImportError
from pathlib import Path
from core.errors import UserError
from core.estimators import EstimatorSpec, build_estimator
print(type(build_estimator(EstimatorSpec(weights=Path({str(decflow_checkpoint)!r}), device="cpu"))).__name__)
try:
    build_estimator(EstimatorSpec(onnx=Path({str(tmp_path / "any.onnx")!r})))
except UserError as error:
    print(error)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "FlowEstimator",
        f"{tmp_path / 'any.onnx'}: running an ONNX file needs onnxruntime (pip install -r requirements-export.txt)",
    ]
