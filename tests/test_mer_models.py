"""STSTNet as its public code computes it (keys, shapes, logits), its folds-at-once form, the registry."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.mer import kernel
from core.mer.loso import TrainConfig, train_loso
from core.mer.models import MODELS, ConvReluNormPool, FoldedSTSTNet, FusedFoldStep, STSTNet, pooled_fc_weight

# The public code's state dict (christy1206/STSTNet main.py), written out by hand: name -> shape
PUBLIC_KEYS = {
    "conv1.weight": (3, 3, 3, 3),
    "conv1.bias": (3,),
    "conv2.weight": (5, 3, 3, 3),
    "conv2.bias": (5,),
    "conv3.weight": (8, 3, 3, 3),
    "conv3.bias": (8,),
    **{
        f"bn{i}.{name}": shape
        for i, width in ((1, 3), (2, 5), (3, 8))
        for name, shape in (
            ("weight", (width,)),
            ("bias", (width,)),
            ("running_mean", (width,)),
            ("running_var", (width,)),
            ("num_batches_tracked", ()),
        )
    },
    "fc.weight": (3, 400),
    "fc.bias": (3,),
}


def random_state(seed: int) -> dict[str, torch.Tensor]:
    """A state dict built by name (as a released file's), with non-trivial batch-norm statistics."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in PUBLIC_KEYS.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[name] = 0.3 * torch.randn(shape, generator=generator)
    return state


def functional_ststnet(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The public code's eval-mode forward, written with functional ops: stream i is conv (padding 2),
    ReLU, batch norm with the running statistics, max-pool 3/3/1; concatenation, avg-pool 2, linear."""
    streams = []
    for i in (1, 2, 3):
        y = torch.relu(F.conv2d(x, state[f"conv{i}.weight"], state[f"conv{i}.bias"], padding=2))
        mean, var = state[f"bn{i}.running_mean"], state[f"bn{i}.running_var"]
        y = (y - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
        y = y * state[f"bn{i}.weight"][:, None, None] + state[f"bn{i}.bias"][:, None, None]
        streams.append(F.max_pool2d(y, 3, stride=3, padding=1))
    pooled = F.avg_pool2d(torch.cat(streams, 1), 2)
    return pooled.flatten(1) @ state["fc.weight"].T + state["fc.bias"]


def test_state_dict_keys_and_shapes_are_the_public_codes():
    state = STSTNet().state_dict()
    assert {name: tuple(value.shape) for name, value in state.items()} == PUBLIC_KEYS


def test_a_state_dict_built_by_name_loads_strictly_and_gives_the_public_forwards_logits():
    state = random_state(0)
    model = STSTNet()
    model.load_state_dict(state, strict=True)
    model.eval()
    x = torch.randn(5, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (5, 3)
    torch.testing.assert_close(logits, functional_ststnet(state, x), rtol=1e-5, atol=1e-5)


def test_relu_comes_before_batch_norm():
    """A negative pre-activation is cut to 0 *before* batch norm, so it comes out as bn(0) = beta - gamma*mean/std."""
    state = random_state(2)
    model = STSTNet()
    model.load_state_dict(state)
    model.eval()
    swapped = dict(state)
    for i in (1, 2, 3):
        swapped[f"bn{i}.running_mean"] = state[f"bn{i}.running_mean"] + 1.0
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert not torch.allclose(model(x), functional_ststnet(swapped, x))
        torch.testing.assert_close(model(x), functional_ststnet(state, x), rtol=1e-5, atol=1e-5)


def test_folded_model_is_each_folds_ststnet_on_its_own_batch():
    """Training mode, batches of different sizes (the padding masked): each fold's logits, batch-norm running
    statistics and weights are its own STSTNet's."""
    torch.manual_seed(4)
    models = [STSTNet(dropout=0.0, size=12) for _ in range(4)]
    untouched = {name: value.clone() for name, value in models[3].state_dict().items()}
    folded = FoldedSTSTNet(models=models).train()
    sizes = [6, 4, 1, 0]  # the last fold has no batch this step: nothing of it changes
    x = torch.randn(4, 6, 3, 12, 12)  # [F, B, C, S, S]: fold f's batch, stored as inputs [F * B, C, S, S]
    indices = torch.arange(24).view(4, 6).T  # [B, F]: sample b of fold f is inputs[6 f + b]
    mask = torch.arange(6)[:, None] < torch.tensor(sizes)  # [B, F]
    logits = folded(x.flatten(0, 1), indices, mask)
    assert logits.shape == (6, 4, 3)
    for name, value in folded.fold_state(3).items():
        assert torch.equal(value, untouched[name]), name
    for f, (model, size) in enumerate(zip(models[:3], sizes[:3], strict=True)):  # fold 3: no batch
        model.train()
        expected = model(x[f, :size])
        torch.testing.assert_close(logits[:size, f], expected, rtol=1e-5, atol=1e-5)
        state = folded.fold_state(f)
        fresh = STSTNet(dropout=0.0, size=12)
        fresh.load_state_dict(state, strict=True)
        for name, value in model.state_dict().items():
            torch.testing.assert_close(state[name], value, rtol=1e-5, atol=1e-6, msg=name)


BATCH = 21  # the kernel's float sums go into double every 16 samples: both paths run


def random_stage(seed: int, *, channels: int = 3, ties: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Inputs `[BATCH, channels, 13, 13]` and a stage's parameters (convolution weight and bias, batch-norm weight
    and bias), the batch-norm weights of both signs (a negative weight makes the max-pool a min-pool). With
    `ties`, small integers make the convolution's outputs integers, many equal within a pooling window (the
    first one in row-major order is the chosen one)."""
    generator = torch.Generator().manual_seed(seed)
    if ties:
        x = torch.randint(-2, 3, (BATCH, channels, 13, 13), generator=generator).float()
        conv_weight = torch.randint(-1, 2, (16, channels, 3, 3), generator=generator).float()
        conv_bias = torch.zeros(16)
    else:
        x = torch.randn(BATCH, channels, 13, 13, generator=generator)
        conv_weight = 0.4 * torch.randn(16, channels, 3, 3, generator=generator)
        conv_bias = 0.1 * torch.randn(16, generator=generator)
    bn_weight = (torch.rand(16, generator=generator) + 0.2) * torch.tensor([1.0, -1.0]).repeat(8)  # both signs
    bn_bias = torch.randn(16, generator=generator)
    return x, [conv_weight, conv_bias, bn_weight, bn_bias]


def reference_stage(x: torch.Tensor, params: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """PyTorch's modules in training mode: conv, ReLU, batch norm, max-pool -> (maps, batch mean, unbiased var)."""
    running_mean, running_var = torch.zeros(16), torch.zeros(16)
    h = torch.relu(F.conv2d(x, params[0], params[1], padding=2))
    y = F.batch_norm(h, running_mean, running_var, params[2], params[3], training=True, momentum=1.0)
    return F.max_pool2d(y, 3, stride=3, padding=1), running_mean, running_var  # momentum 1: the batch's own


def test_the_training_stage_equals_conv_relu_batch_norm_max_pool_with_its_gradients():
    """ConvReluNormPool (pool before the normalisation, a written-out backward) against PyTorch's modules in
    training mode: outputs, the batch's statistics and every gradient."""
    x, values = random_stage(6)
    upstream = torch.randn(BATCH, 16, 5, 5, generator=torch.Generator().manual_seed(7))  # 13 + 4 - 2 = 15, pooled to 5
    params = [p.clone().requires_grad_() for p in values]
    out, mean, var = ConvReluNormPool.apply(F.pad(x, (2, 2, 2, 2)), torch.arange(BATCH), *params)
    out.backward(upstream)
    reference = [p.clone().requires_grad_() for p in values]
    expected, running_mean, running_var = reference_stage(x, reference)
    expected.backward(upstream)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean, running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var, running_var, rtol=1e-5, atol=1e-6)  # unbiased, as nn.BatchNorm2d keeps
    for name, got, want in zip(("conv weight", "conv bias", "bn weight", "bn bias"), params, reference, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    ("dropout", "channels", "ties"),
    [(True, 3, False), (False, 3, False), (True, 1, False), (True, 2, False), (True, 4, False), (True, 3, True)],
    ids=["dropout", "no dropout", "1 channel", "2 channels", "4 channels", "ties in the pool"],
)
def test_the_compiled_fold_step_equals_ststnets_modules_with_every_gradient(dropout, channels, ties):
    """FusedFoldStep (the compiled kernel: stage, batch norm of the pooled maps, dropout, linear layer) against
    PyTorch's modules in training mode (conv, ReLU, batch norm, max-pool, dropout's mask, 2x2 average pool,
    linear), 4 classes, each input channel count the kernel instantiates: logits, the batch's statistics and
    the gradient of every parameter."""
    if kernel.stage_library() is None:
        pytest.skip("no C++ compiler here")
    x, values = random_stage(8, channels=channels, ties=ties)
    generator = torch.Generator().manual_seed(9)
    fc_weight, fc_bias = torch.randn(4, 16 * 2 * 2, generator=generator), torch.randn(4, generator=generator)
    draws = torch.randint(0, 2**16, (BATCH, 5, 5, 16), dtype=torch.int32, generator=generator) if dropout else None
    upstream = torch.randn(BATCH, 4, generator=generator)
    params = [p.clone().requires_grad_() for p in (*values, fc_weight, fc_bias)]
    spread = pooled_fc_weight(params[4][None], side=5).permute(0, 1, 3, 4, 2).flatten(2)[0]  # [K, P * P * 16]
    buffers = kernel.Buffers.empty(BATCH + 3, side=13, pooled_side=5).first(BATCH)  # as reused buffers' views
    logits, mean, var = FusedFoldStep.apply(
        F.pad(x, (2, 2, 2, 2)), torch.arange(BATCH), *params[:4], spread, params[5], draws, 0.3, buffers
    )
    logits.backward(upstream)
    reference = [p.clone().requires_grad_() for p in (*values, fc_weight, fc_bias)]
    maps, running_mean, running_var = reference_stage(x, reference[:4])
    if dropout:  # p = 0.3: kept where the draw is below round(0.7 * 2^16) = 45875, times 1 / 0.7
        maps = maps * torch.where(draws < 45875, 1 / 0.7, 0.0).permute(0, 3, 1, 2)
    expected = F.linear(F.avg_pool2d(maps, 2).flatten(1), reference[4], reference[5])
    expected.backward(upstream)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean, running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var, running_var, rtol=1e-5, atol=1e-6)
    names = ("conv weight", "conv bias", "bn weight", "bn bias", "fc weight", "fc bias")
    for name, got, want in zip(names, params, reference, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_folded_steps_compiled_equal_pytorchs_as_the_batch_grows():
    """Two training steps of a folded model, batches of 3 then 5 per fold (the reused buffers grow), with dropout:
    the compiled steps give PyTorch's kernels' logits and gradients."""
    if kernel.stage_library() is None:
        pytest.skip("no C++ compiler here")
    torch.manual_seed(6)
    models = [STSTNet(dropout=0.5, size=12) for _ in range(2)]
    nets = [FoldedSTSTNet(models=models, compiled=compiled).train() for compiled in (True, False)]
    inputs = torch.randn(10, 3, 12, 12)
    generator = torch.Generator().manual_seed(7)
    for batch in (3, 5):
        indices = torch.randperm(10, generator=generator)[: 2 * batch].view(batch, 2)  # [B, F]
        mask = torch.ones(batch, 2, dtype=torch.bool)
        draws = [torch.randint(0, 2**16, (batch, 5, 5, 16), dtype=torch.int32, generator=generator) for _ in range(2)]
        logits = [net(inputs, indices, mask, draws) for net in nets]
        torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)
        for net, fold_logits in zip(nets, logits, strict=True):
            net.zero_grad()
            fold_logits.square().sum().backward()
        for (name, got), want in zip(nets[0].named_parameters(), nets[1].parameters(), strict=True):
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5, msg=f"{name}, batch {batch}")


def test_the_kernel_refuses_what_it_cannot_read():
    """Dropout draws of another type or shape, a linear layer of another width and int32 rows are refused
    before the kernel reads them; strided batch-norm parameters give the contiguous ones' logits."""
    if kernel.stage_library() is None:
        pytest.skip("no C++ compiler here")
    x, values = random_stage(9)
    padded, rows, fc = F.pad(x, (2, 2, 2, 2)), torch.arange(BATCH), torch.randn(3, 5 * 5 * 16)
    draws = torch.randint(0, 2**16, (BATCH, 5, 5, 16), dtype=torch.int32)

    def step(*, rows=rows, bn=values[2:], draws=draws, fc=fc):  # noqa: ANN001, ANN202
        buffers = kernel.Buffers.empty(BATCH, side=13, pooled_side=5).first(BATCH)
        return FusedFoldStep.apply(padded, rows, *values[:2], *bn, fc, torch.zeros(3), draws, 0.5, buffers)[0]

    for bad, message in (
        ({"draws": draws.long()}, "dropout draws must be int32"),
        ({"draws": draws[:-1]}, "dropout draws must be int32"),
        ({"fc": fc[:, :-16]}, "the linear layer must be"),
        ({"rows": rows.int()}, "the batch's rows must be int64"),
    ):
        with pytest.raises(ValueError, match=message):
            step(**bad)
    strided = [torch.stack([value, -value], dim=1)[:, 0] for value in values[2:]]  # every other element
    assert not strided[0].is_contiguous()
    torch.testing.assert_close(step(bn=strided), step(), rtol=0, atol=0)


def test_a_graph_whose_relu_maps_were_reused_fails_in_backward():
    """The compiled steps reuse each fold's ReLU-map buffer: the graph of an earlier forward, whose maps a later
    forward overwrote, must fail in backward, not return wrong gradients; the latest graph still works."""
    if kernel.stage_library() is None:
        pytest.skip("no C++ compiler here")
    torch.manual_seed(5)
    folded = FoldedSTSTNet(models=[STSTNet(dropout=0.0, size=12) for _ in range(2)]).train()
    inputs = torch.randn(8, 3, 12, 12)
    indices, mask = torch.arange(8).view(2, 4).T, torch.ones(4, 2, dtype=torch.bool)  # [B, F]
    first = folded(inputs, indices, mask).sum()
    second = folded(inputs, indices, mask).sum()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        first.backward()
    second.backward()
    assert folded.conv_weight.grad.abs().sum() > 0


@pytest.mark.parametrize("side", [10, 5, 2])
def test_the_linear_layer_spread_over_the_pool_windows_equals_pool_then_linear(side):
    """pooled_fc_weight: one linear map of the max-pooled maps equals the 2x2 average pool (which drops an odd
    last row and column) followed by the linear layer."""
    generator = torch.Generator().manual_seed(side)
    maps = torch.randn(7, 16, side, side, generator=generator)
    fc_weight = torch.randn(2, 3, 16 * (side // 2) ** 2, generator=generator)  # [F, K, 16 * s * s]
    expected = torch.einsum("bd,fkd->bfk", F.avg_pool2d(maps, 2).flatten(1), fc_weight)
    spread = pooled_fc_weight(fc_weight, side=side).flatten(2)
    torch.testing.assert_close(torch.einsum("bd,fkd->bfk", maps.flatten(1), spread), expected, rtol=1e-5, atol=1e-5)


def test_a_users_module_registers_and_trains(monkeypatch):
    """A module added to MODELS trains under the protocol untouched: a linear model learns a separable class."""

    def build(*, num_classes: int, in_channels: int, size: int, dropout: float) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * size * size, num_classes))

    monkeypatch.setitem(MODELS, "linear", build)
    generator = torch.Generator().manual_seed(5)
    targets = torch.arange(24) % 3
    inputs = 0.1 * torch.randn(24, 2, 4, 4, generator=generator)
    inputs[torch.arange(24), 0, 0, targets] += 1.0  # class k: value k of the first row is near 1
    groups = [f"s{i % 4}" for i in range(24)]
    result = train_loso(
        inputs, targets, groups, num_classes=3, config=TrainConfig(model="linear", epochs=30, lr=0.1, batch_size=32)
    )
    assert set(result.states["s0"]) == {"1.weight", "1.bias"}
    assert (result.predictions == targets).float().mean() >= 0.9


@pytest.mark.parametrize("size, features", [(28, 400), (12, 16 * 2 * 2)])
def test_fc_input_follows_the_input_size(size, features):
    assert STSTNet(size=size).fc.in_features == features
    assert STSTNet(size=size)(torch.zeros(2, 3, size, size)).shape == (2, 3)
