"""core.mer.kernel: STSTNet's training steps compiled for this CPU, and the fallback without a compiler."""

import dataclasses

import pytest
import torch

from core.mer import kernel
from core.mer.loso import TrainConfig, train_loso

# a few steps with a large learning rate and dropout; batches of 7 leave ragged last batches
TINY = TrainConfig(epochs=3, lr=0.01, batch_size=7, folds_at_once=2)


def tiny_data(seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Noise inputs `[18, 3, 12, 12]`, random targets of 3 classes, 4 subjects."""
    generator = torch.Generator().manual_seed(seed)
    groups = [f"s{i % 4}" for i in range(18)]
    inputs = torch.randn(len(groups), 3, 12, 12, generator=generator)
    return inputs, torch.randint(0, 3, (len(groups),), generator=generator), groups


def test_the_protocol_through_the_kernel_equals_it_through_pytorchs_kernels():
    """The whole leave-one-subject-out protocol (dropout on, several steps) gives the same held-out logits and
    weights with the compiled steps as with PyTorch's kernels, to float rounding."""
    if kernel.stage_library() is None:
        pytest.skip("no C++ compiler here")
    inputs, targets, groups = tiny_data(0)
    compiled = train_loso(inputs, targets, groups, num_classes=3, config=TINY)
    eager = train_loso(inputs, targets, groups, num_classes=3, config=dataclasses.replace(TINY, compiled=False))
    torch.testing.assert_close(compiled.logits, eager.logits, rtol=1e-4, atol=1e-5)
    for group, state in eager.states.items():
        for name, value in state.items():
            torch.testing.assert_close(compiled.states[group][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_without_a_compiler_it_says_so_and_training_runs_on_pytorchs_kernels(monkeypatch, capsys):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(kernel.shutil, "which", lambda name: None)
    assert kernel.stage_library.__wrapped__() is None
    assert capsys.readouterr().err == "core.mer: no C++ compiler (c++, $CXX): STSTNet trains on PyTorch's kernels\n"

    monkeypatch.setattr(kernel, "stage_library", lambda: None)
    inputs, targets, groups = tiny_data(1)
    assert not kernel.usable(inputs)
    result = train_loso(inputs, targets, groups, num_classes=3, config=TINY)
    assert result.logits.isfinite().all() and len(result.states) == 4


def test_a_compiler_that_fails_is_named_with_its_first_line(monkeypatch, capsys, tmp_path):
    failing = tmp_path / "cxx"
    failing.write_text("#!/bin/sh\necho 'stage.cpp:1: error: planted' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CXX", str(failing))
    assert kernel.stage_library.__wrapped__() is None
    message = capsys.readouterr().err
    assert message == f"core.mer: {failing} failed (stage.cpp:1: error: planted): STSTNet trains on PyTorch's kernels\n"
