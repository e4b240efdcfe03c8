"""core.inference (pad, infer, crop, warm start; CUDA graphs) and the device-aware correlation
policy. CUDA-only checks run where CUDA is present and are skipped elsewhere."""

from __future__ import annotations

import json

import pytest
import torch

from core.checkpoint import save_checkpoint
from core.corr import CorrBlock, coords_grid, dense_from_level
from core.inference import FlowEstimator, GraphedEstimate, load_model
from core.network import DecFlow, DecFlowConfig
from core.reference import straightforward_forward
from core.utils.padder import InputPadder
from tests.model_helpers import assert_flows_close, authors_state_dict

STATE = authors_state_dict(prefix="")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = torch.device("cuda")  # the device of the CUDA-only tests


def _model(device: torch.device | str = "cpu", **options) -> DecFlow:
    model = DecFlow(DecFlowConfig(**options))
    model.load_state_dict(STATE)
    return model.eval().to(device)


def _pair(height: int, width: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    image1 = torch.rand(batch, 3, height, width, generator=generator) * 255
    return image1, torch.roll(image1, shifts=(2, -3), dims=(-2, -1))


@torch.no_grad()
def test_estimator_pads_runs_and_crops_like_the_straightforward_forward():
    model = _model()
    image1, image2 = _pair(130, 150)  # padded to 136 x 152 (mode "exp")
    flows = FlowEstimator(model, iters=3, device="cpu")(image1[0], image2[0])
    padder = InputPadder(image1.shape, mode="exp", min_side=128)
    expected = straightforward_forward(model, *padder.pad(image1, image2), iters=3, test_mode=True)
    assert flows.facial.shape == (1, 2, 130, 150) and flows.facial_low.shape == (1, 2, 17, 19)
    names = ("facial", "head", "expression")
    unpadded = {name: padder.unpad(getattr(expected, name)) for name in names}
    torch.testing.assert_close({name: getattr(flows, name) for name in names}, unpadded, rtol=0, atol=1e-3)
    torch.testing.assert_close(flows.facial_low, expected.facial_low, rtol=0, atol=1e-3)


@torch.no_grad()
def test_estimator_warm_start_feeds_each_decoder_its_own_flow():
    model = _model()
    image1, image2 = _pair(128, 136)
    estimator = FlowEstimator(model, iters=2, device="cpu", pad_mode="symmetric")
    first = estimator(image1, image2)
    warm = estimator(image1, image2, flow_init=(first.facial_low, first.head_low))
    expected = model(image1, image2, iters=2, flow_init=(first.facial_low, first.head_low), test_mode=True)
    assert (warm.facial - expected.facial).abs().max() <= 1e-5
    assert (warm.head - expected.head).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="flow_init"):
        estimator(image1, image2, flow_init=first.facial_low[..., :-1])


@torch.no_grad()
def test_a_batch_gives_the_flow_of_each_pair_alone():
    """Pairs in one batch (float32): the flow of each pair run alone, within 1e-4 px."""
    model = _model()
    image1, image2 = _pair(130, 150, batch=3)  # three different pairs
    estimator = FlowEstimator(model, iters=3, device="cpu")
    batched = estimator(image1, image2)
    names = ("facial", "head", "expression", "facial_low", "head_low")
    for k in range(3):
        alone = estimator(image1[k], image2[k])
        torch.testing.assert_close(
            {f"{name}[{k}]": getattr(batched, name)[k] for name in names},
            {f"{name}[{k}]": getattr(alone, name)[0] for name in names},
            rtol=0,
            atol=1e-4,
        )


def test_estimator_rejects_bad_options():
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        FlowEstimator(_model(), iters=3, device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="iters must be >= 1"):
        FlowEstimator(_model(), iters=0, device="cpu")


def test_correlation_storage_policy_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    full_hd = (1080 // 8) * (1920 // 8)
    assert dense_from_level(1, 60 * 60, cpu) == 0
    assert dense_from_level(1, full_hd, cpu) == 1  # over the CPU's 512 MiB
    # CUDA: the whole pyramid (4.2 GB finest level in float32 at 1920x1080) while it fits half the free memory
    assert dense_from_level(1, full_hd, cuda, free_bytes=80 * 2**30) == 0
    assert dense_from_level(1, full_hd, cuda, free_bytes=8 * 2**30) == 1
    assert dense_from_level(1, full_hd, cuda, bytes_per_value=2, free_bytes=8 * 2**30) == 0


@pytest.mark.parametrize("stored_from", [0, 1, 4])
def test_low_precision_correlation_matches_float32(stored_from):
    """The CUDA mixed-precision path stores and computes correlations in the autocast dtype;
    its CPU equivalent (bfloat16 here) stays within that dtype's rounding of float32."""
    generator = torch.Generator().manual_seed(0)
    fmap1, fmap2 = (torch.randn(1, 64, 16, 24, generator=generator) for _ in range(2))
    coords = coords_grid(1, 16, 24) + 3 * torch.randn(1, 2, 16, 24, generator=generator)
    exact = CorrBlock(fmap1, fmap2, dense_from_level=stored_from)(coords)
    low = CorrBlock(fmap1, fmap2, dense_from_level=stored_from, dtype=torch.bfloat16)(coords)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, exact, rtol=0, atol=0.02 * exact.abs().max().item())
    assert (low - exact).abs().mean() <= 0.005 * exact.abs().mean() + 1e-3


@needs_cuda
@pytest.mark.parametrize("amp_dtype", [None, torch.float16])
@torch.no_grad()
def test_cuda_graphs_give_the_eager_flow(amp_dtype):
    model = _model(CUDA)
    image1, image2 = (image.to(CUDA) for image in _pair(136, 176))
    graphed = GraphedEstimate(model)
    init = torch.full((1, 2, 17, 22), 0.5, device=CUDA)
    for flow_init in [(None, None), (init, init), (init, 2 * init)]:
        eager = model.forward_unchecked(
            image1, image2, iters=5, flow_init=flow_init, test_mode=True, amp_dtype=amp_dtype
        )
        for _ in range(2):  # capture, then replay
            replayed = graphed(image1, image2, iters=5, flow_init=flow_init, amp_dtype=amp_dtype)
        tolerance = 1e-4 if amp_dtype is None else 1e-2
        assert_flows_close(replayed, eager, ("facial", "head", "expression", "facial_low", "head_low"), atol=tolerance)
    assert not graphed.failed and len(graphed.graphs) == 2  # the two most recent of three


@needs_cuda
@torch.no_grad()
def test_cuda_graph_replays_new_inputs():
    model = _model(CUDA)
    estimator = FlowEstimator(model, iters=4, device=CUDA)
    pairs = [_pair(128, 160), tuple(torch.flip(image, dims=(-1,)) for image in _pair(128, 160))]
    for image1, image2 in pairs + pairs:
        got = estimator(image1, image2)
        expected = model(image1.to(CUDA), image2.to(CUDA), iters=4, test_mode=True)
        torch.testing.assert_close(got.facial, expected.facial, rtol=0, atol=1e-4)
    assert len(estimator.graphed.graphs) == 1


@needs_cuda
@torch.no_grad()
def test_cuda_fast_paths_match_the_straightforward_forward_on_cpu():
    cpu_model = _model()
    image1, image2 = _pair(136, 176)
    expected = straightforward_forward(cpu_model, image1, image2, iters=4, test_mode=True)
    for options, tolerance in [({}, 1e-2), ({"amp_dtype": torch.float16}, 0.1), ({"alternate_corr": True}, 1e-2)]:
        flows = FlowEstimator(_model(CUDA), iters=4, device=CUDA, **options)(image1, image2)
        for name in ("facial", "head"):
            assert (getattr(flows, name).cpu() - getattr(expected, name)).abs().mean() <= tolerance, (options, name)


def test_load_model_refuses_a_description_of_another_architecture(tmp_path):
    """The attention modes share their weight keys: only the .json beside the weights tells them apart."""
    trained = DecFlow(DecFlowConfig(position_only=True))
    weights = tmp_path / "run.pth"
    save_checkpoint(trained, weights, description={"step": 7})
    assert json.loads(weights.with_suffix(".json").read_text())["config"]["position_only"] is True
    model = load_model(weights, config=DecFlowConfig(position_only=True), device=torch.device("cpu"))
    assert model.config.position_only and not model.training
    with pytest.raises(ValueError) as error:
        load_model(weights, config=DecFlowConfig(), device=torch.device("cpu"))
    assert str(error.value) == (
        f"{weights} was trained with position_only=True (see {tmp_path / 'run.json'}), "
        "but the model options give position_only=False"
    )
    weights.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="run.json: not a description of run.pth"):
        load_model(weights, config=DecFlowConfig(), device=torch.device("cpu"))
    weights.with_suffix(".json").unlink()  # the authors' files come without one: strict loading only
    bare = load_model(weights, config=DecFlowConfig(), device=torch.device("cpu"))
    assert not bare.config.position_only  # the options given, nothing to contradict them
    expected = trained.state_dict()
    assert bare.state_dict().keys() == expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in bare.state_dict().items())
