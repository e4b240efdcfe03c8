"""ONNX export (core/export.py) and its onnxruntime estimator (core/onnx_runtime.py).

One file is exported per session through the real entry point, with weights in the
release's format (`authors_state_dict`: trained-like magnitudes, attention `gamma` != 0),
traced at 128x160, 2 iterations: the second iteration is the first to look the correlation
up at moved, fractional coordinates. It then runs at other sizes and batches against the
eager float32 model.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import get_flow

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install -r requirements-export.txt)")
pytest.importorskip("onnxscript", reason="onnxscript not installed (pip install -r requirements-export.txt)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -r requirements-export.txt)")

from core import export  # noqa: E402
from core.cli import exit_on_error  # noqa: E402
from core.corr import CorrBlock, coords_grid  # noqa: E402
from core.inference import FlowEstimator, load_model  # noqa: E402
from core.network import DecFlowConfig  # noqa: E402
from core.onnx_runtime import OUTPUT_NAMES, OnnxFlowEstimator, SizeRule, open_session  # noqa: E402
from core.weights import sha256_of  # noqa: E402
from tests.model_helpers import assert_flows_close, authors_state_dict  # noqa: E402

ITERS = 2
TRACE_SIZE = ("128", "160")
TOLERANCE = 1e-3  # px, the parity bound


def export_args(*argv: str) -> argparse.Namespace:
    return export.get_args_parser().parse_args(list(argv))


@pytest.fixture(scope="module")
def release_checkpoint(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("weights") / "decflow-release-format.pth"
    torch.save(authors_state_dict(), path)  # `module.` keys, as the authors' file
    return str(path)


@pytest.fixture(scope="module")
def exported(release_checkpoint, tmp_path_factory):
    """The export of the release-format weights (about 100 s on two loaded CPU cores: tracing and
    translating the whole network; shared by every test of this module)."""
    output = tmp_path_factory.mktemp("onnx") / "decflow.onnx"
    args = export_args(
        "--model", release_checkpoint, "--iters", str(ITERS), "--size", *TRACE_SIZE, "--output", str(output)
    )
    return export.main(args)


def images(batch: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(batch, 3, height, width, generator=generator) * 255 for _ in range(2))


@pytest.mark.parametrize("batch, height, width", [(1, 128, 128), (3, 144, 136)])
def test_onnxruntime_matches_eager_at_sizes_and_batches_other_than_the_traced_one(
    exported, release_checkpoint, batch, height, width
):
    """Slow only through the module's `exported` fixture (about 100 s: the export itself); the check is 1-2 s."""
    model = load_model(release_checkpoint, config=DecFlowConfig(), device=torch.device("cpu"))
    image1, image2 = images(batch, height, width, seed=height)
    eager = FlowEstimator(model, iters=ITERS, device="cpu", cuda_graphs=False)(image1, image2)
    onnx_flow = OnnxFlowEstimator(exported["output"])(image1, image2)
    for name in OUTPUT_NAMES:
        reference, result = getattr(eager, name), getattr(onnx_flow, name)
        assert result.shape == (batch, 2, height, width), name
        assert reference.abs().max() > 1.0, name  # a real flow, not zeros on both sides
    assert_flows_close(onnx_flow, eager, OUTPUT_NAMES, atol=TOLERANCE)


def test_export_records_iterations_weights_and_size_rule_and_checks_parity(exported, release_checkpoint):
    estimator = OnnxFlowEstimator(exported["output"], iters=ITERS)
    assert estimator.iters == ITERS
    assert estimator.description() == {
        "iters": ITERS,
        "padding_mode": "exp",
        "precision": "float32 (onnxruntime)",
        "model_options": {
            "num_heads": 1,
            "position_only": False,
            "position_and_content": False,
            "alternate_corr": False,
        },
    }
    assert estimator.weights_sha256 == sha256_of(release_checkpoint)
    assert estimator.size_rule == SizeRule(multiple_of=8, min_side=128, max_side=None)
    assert estimator.config == {"num_heads": 1, "position_only": False, "position_and_content": False, "dropout": 0.0}
    assert max(exported["parity"].values()) <= TOLERANCE
    with pytest.raises(ValueError, match="exported with 2 iterations; --iters 12 differs"):
        OnnxFlowEstimator(exported["output"], iters=12)


def test_export_refuses_an_existing_output_a_bad_checkpoint_and_zero_iterations(tmp_path, release_checkpoint):
    existing = tmp_path / "old.onnx"
    existing.write_bytes(b"keep me")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    cases = [
        (["--model", release_checkpoint, "--iters", "2", "--output", str(existing)], "already exists"),
        (["--model", str(bad), "--iters", "2", "--output", str(tmp_path / "a.onnx")], str(bad)),
        (["--model", release_checkpoint, "--iters", "0", "--output", str(tmp_path / "b.onnx")], "--iters must be >= 1"),
        (["--model", release_checkpoint, "--iters", "2", "--size", "100", "128", "--output", "c.onnx"], "--size 100"),
    ]
    for argv, fragment in cases:
        with pytest.raises(SystemExit) as stop:
            export.main(export_args(*argv))
        message = str(stop.value.code)
        assert fragment in message and "\n" not in message and len(message) < 200, message
    assert existing.read_bytes() == b"keep me"
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()


def test_zero_iterations_is_the_shared_one_line_error(capsys):
    """`--iters` is core.cli's AtLeastOne, as in every script (tests/test_cli_options.py)."""
    with pytest.raises(SystemExit) as stop:
        exit_on_error(lambda: export_args("--iters", "0", "--output", "x.onnx"))
    assert stop.value.code == 2
    assert capsys.readouterr().err == "python -m core.export: error: --iters must be >= 1, got 0\n"


def test_estimator_names_a_file_that_is_not_a_decflow_export(tmp_path):
    garbage = tmp_path / "flow.onnx"
    garbage.write_bytes(b"\x00not protobuf" * 10)
    with pytest.raises(ValueError, match=f"{garbage} is not an ONNX model"):
        OnnxFlowEstimator(garbage)
    # an ONNX model with DecFlow's metadata but other outputs (e.g. an older export)
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image1"], ["flow"])],
        "other",
        [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, 3, 8, 8]) for name in ("image1", "image2")],
        [helper.make_tensor_value_info("flow", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    foreign = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    foreign.ir_version = 8
    entry = foreign.metadata_props.add()
    entry.key, entry.value = "decflow.format", "1"
    other = tmp_path / "other.onnx"
    other.write_bytes(foreign.SerializeToString())
    with pytest.raises(ValueError, match=f"{other}: a DecFlow export maps"):
        OnnxFlowEstimator(other)
    entry.value = "0"
    other.write_bytes(foreign.SerializeToString())
    with pytest.raises(ValueError, match=f"{other} is not a DecFlow export"):
        OnnxFlowEstimator(other)


def test_sessions_use_pytorchs_threads_and_do_not_spin(exported):
    """onnxruntime's default is one thread per core and spinning workers, which slowed the next
    PyTorch run on the same cores (docs/export.md)."""
    options = open_session(exported["output"]).get_session_options()
    assert options.intra_op_num_threads == torch.get_num_threads()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def run_get_flow(*argv: str) -> None:
    get_flow.main(get_flow.get_args_parser().parse_args([*argv, "--device", "cpu"]))


def test_get_flow_through_onnxruntime_writes_the_flows_of_the_eager_model(exported, release_checkpoint, tmp_path):
    pair = ["--save_format", "npy"]  # the demo pair
    run_get_flow(*pair, "--model", release_checkpoint, "--iters", str(ITERS), "--output", str(tmp_path / "eager"))
    run_get_flow(*pair, "--onnx", str(exported["output"]), "--output", str(tmp_path / "onnx"))  # iters from the file
    written = sorted(path.name for path in (tmp_path / "eager").iterdir())
    assert written == sorted(path.name for path in (tmp_path / "onnx").iterdir())
    flows = [name for name in written if name.endswith(".npy")]
    assert len(flows) == 3
    for name in flows:
        eager, onnx_flow = (np.load(tmp_path / folder / name) for folder in ("eager", "onnx"))
        # expression = facial - head: its difference is at most the sum of theirs
        bound = 2 * TOLERANCE if "expression" in name else TOLERANCE
        assert np.abs(eager).max() > 1.0, name
        np.testing.assert_allclose(onnx_flow, eager, rtol=0, atol=bound, equal_nan=False, err_msg=name)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx file")
    for argv, fragment in [
        (["--onnx", str(exported["output"]), "--iters", "12"], f"{exported['output']} was exported with 2 iterations"),
        (["--onnx", str(garbage)], f"{garbage} is not an ONNX model"),
    ]:
        with pytest.raises(SystemExit) as stop:
            run_get_flow(*pair, *argv, "--output", str(tmp_path / "other"))
        message = str(stop.value.code)
        assert fragment in message and "\n" not in message, message


class Lookup(torch.nn.Module):
    """Correlation pyramid and one lookup (the code the TorchScript exporter used to fail on)."""

    def forward(self, fmap1: torch.Tensor, fmap2: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return CorrBlock(fmap1, fmap2, num_levels=4, radius=4)(coords)


def test_the_legacy_torchscript_exporter_exports_the_correlation_lookup(tmp_path):
    generator = torch.Generator().manual_seed(0)
    fmap1, fmap2 = torch.randn(2, 1, 32, 16, 20, generator=generator)
    coords = coords_grid(1, 16, 20) + 3 * torch.randn(1, 2, 16, 20, generator=generator)  # fractional, some outside
    path = tmp_path / "lookup.onnx"
    torch.onnx.export(Lookup(), (fmap1, fmap2, coords), str(path), dynamo=False, opset_version=18)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {node.name: value.numpy() for node, value in zip(session.get_inputs(), (fmap1, fmap2, coords))}
    (result,) = session.run(None, feed)
    expected = Lookup()(fmap1, fmap2, coords).numpy()
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(result, expected, atol=1e-5)


def test_size_rule_round_trips_and_names_each_problem():
    rule = SizeRule(max_side=1280)
    assert SizeRule.from_json(rule.to_json()) == rule
    assert json.loads(rule.to_json()) == {"max_side": 1280, "min_side": 128, "multiple_of": 8}
    assert rule.problem(128, 1280) is None
    assert "multiples of 8" in rule.problem(130, 128)
    assert "at least 128" in rule.problem(120, 128)
    assert "at most 1280" in rule.problem(128, 1288)
