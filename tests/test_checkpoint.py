"""Checkpoint I/O: the authors' format both ways, GMA initialisation, ImageNet weights."""

from __future__ import annotations

import errno
import os
import pickle
import tempfile
from pathlib import Path

import pytest
import torch
import torchvision

from core.checkpoint import (
    DEFAULT_CHECKPOINTS,
    NoSpaceError,
    atomic_save,
    default_checkpoint,
    init_semantic_encoder,
    load_checkpoint,
    read_state_dict,
    remove_stale_temporaries,
    save_checkpoint,
)
from core.network import DecFlow
from core.semantic import semantic_state_from_resnet50
from tests.model_helpers import GMA_TSV, authors_state_dict


@pytest.fixture(scope="module")
def authors_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "decflow-facialflownet.pth"
    torch.save(authors_state_dict(prefix="module."), path)
    return path


def _equal_to_authors(model: DecFlow) -> bool:
    """Compared on the CPU: DataParallel moves its module to cuda:0 where CUDA is available."""
    expected = authors_state_dict(prefix="")
    return all(torch.equal(v.cpu(), expected[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_authors_checkpoint_loads_strictly_with_and_without_prefix(tmp_path, prefix):
    path = tmp_path / "authors.pth"
    torch.save(authors_state_dict(prefix=prefix), path)
    model = DecFlow()
    report = load_checkpoint(model, path, strict=True, verbose=False)
    assert _equal_to_authors(model)
    assert not report.initialised
    assert set(report.loaded) >= {
        "fnet",
        "cnet",
        "update_block",
        "update_block_head",
        "att",
        "dad_encoder",
        "change_dim",
        "res1",
    }


def test_unused_semantic_stage_may_be_absent(tmp_path):
    state = {k: v for k, v in authors_state_dict().items() if not k.startswith("module.dad_encoder.model.3.")}
    path = tmp_path / "no_stage3.pth"
    torch.save(state, path)
    report = load_checkpoint(DecFlow(), path, strict=True, verbose=False)
    assert report.initialised == {"dad_encoder.model.3 (unused stage)": 114}


def test_unknown_keys_and_shape_mismatches_are_errors(tmp_path):
    state = authors_state_dict()
    state["module.extra_head.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="extra_head.weight"):
        load_checkpoint(DecFlow(), tmp_path / "extra.pth", strict=False)
    state = authors_state_dict()
    state["module.change_dim.bias"] = torch.zeros(255)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"change_dim.bias: checkpoint \(255,\)"):
        load_checkpoint(DecFlow(), tmp_path / "shape.pth", strict=False)


def test_missing_file_and_garbage_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_checkpoint(DecFlow(), tmp_path / "nowhere.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_checkpoint(DecFlow(), tmp_path / "garbage.pth")


class NotATensor:
    """A class torch.load(weights_only=True) refuses to unpickle."""


def test_unreadable_files_say_what_they_are_without_unsafe_advice(tmp_path):
    """Random bytes, a cut download, an empty file, a foreign pickle: one line naming the file,
    never torch's advice to set weights_only=False."""
    good = tmp_path / "good.pth"
    torch.save({"w": torch.arange(5000.0)}, good)
    data = good.read_bytes()
    cases = {
        "random.pth": (bytes(range(1, 256)) * 8, "random.pth: not a PyTorch checkpoint (neither a zip archive nor"),
        "cut.pth": (data[: len(data) // 2], "cut.pth: damaged PyTorch checkpoint (truncated zip archive"),
        "empty.pth": (b"", "empty.pth: not a PyTorch checkpoint (empty file)"),
        "object.pth": (pickle.dumps({"w": NotATensor()}, protocol=2), "object.pth: holds objects other than tensors"),
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError) as error:
            read_state_dict(tmp_path / name)
        message = str(error.value)
        assert message.startswith(str(tmp_path / expected)), message
        assert "weights_only" not in message and "\n" not in message
    assert "NotATensor" in message  # the last case names what was refused


def test_default_checkpoint_prefers_the_release_then_the_seed_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_CHECKPOINTS == ("checkpoints/decflow-facialflownet.pth", "checkpoints/decflow.pth")
    with pytest.raises(FileNotFoundError) as error:
        default_checkpoint()
    assert all(name in str(error.value) for name in DEFAULT_CHECKPOINTS)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "decflow.pth").write_bytes(b"seed stage 2")
    assert default_checkpoint() == Path("checkpoints/decflow.pth")
    (tmp_path / "checkpoints" / "decflow-facialflownet.pth").write_bytes(b"release")
    assert default_checkpoint() == Path("checkpoints/decflow-facialflownet.pth")


def _fail_after_some_bytes(error: BaseException):
    def save(obj, stream, *args, **kwargs):
        stream.write(b"PK\x03\x04 partial data")
        raise error

    return save


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),  # torch's zip writer
        OSError(errno.ENOSPC, "No space left on device"),
    ],
)
def test_disk_full_during_save_keeps_the_previous_file(tmp_path, monkeypatch, error):
    target = tmp_path / "decflow.pth"
    target.write_bytes(b"previous weights")
    monkeypatch.setattr(torch, "save", _fail_after_some_bytes(error))
    with pytest.raises(NoSpaceError) as raised:
        atomic_save({"w": torch.zeros(3)}, target)
    assert isinstance(raised.value, OSError) and raised.value.errno == errno.ENOSPC
    assert str(raised.value) == f"no space left while writing {target}; the previous {target} is intact"
    assert target.read_bytes() == b"previous weights"
    assert os.listdir(tmp_path) == ["decflow.pth"]  # no temporary left behind


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_disk_full_with_the_real_writer(tmp_path, monkeypatch):
    """torch.save itself writing to a full device (/dev/full) in place of the temporary file."""
    real_fdopen = os.fdopen

    def full_device(handle, mode):
        os.close(handle)
        return real_fdopen(os.open("/dev/full", os.O_WRONLY), mode)

    monkeypatch.setattr(os, "fdopen", full_device)
    target = tmp_path / "new.pth"
    with pytest.raises(NoSpaceError, match=f"no space left while writing {target}; nothing was written"):
        atomic_save({"w": torch.zeros(100_000)}, target)
    assert os.listdir(tmp_path) == []


def test_other_save_errors_pass_through_and_clean_up(tmp_path, monkeypatch):
    target = tmp_path / "decflow.pth"
    monkeypatch.setattr(torch, "save", _fail_after_some_bytes(RuntimeError("cannot pickle 'generator' object")))
    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_save({"w": torch.zeros(3)}, target)
    assert os.listdir(tmp_path) == []


def test_remove_stale_temporaries_removes_only_the_leftovers_of_that_file(tmp_path):
    target = tmp_path / "decflow.pth"
    target.write_bytes(b"weights")
    # what a save killed between mkstemp and os.replace leaves (same call as atomic_save)
    handle, left = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=tmp_path)
    os.close(handle)
    keep = [
        ".decflow.pth.x.tmp",
        ".decflow.pth.bak.pth.abcd1234.tmp",
        ".other.pth.abcd1234.tmp",
        "decflow.pth.abcd1234.tmp",
        "decflow_state.pth",
    ]
    for name in keep:
        (tmp_path / name).write_bytes(b"")
    assert remove_stale_temporaries(target) == [Path(left)]
    assert sorted(os.listdir(tmp_path)) == sorted(keep + ["decflow.pth"])
    assert remove_stale_temporaries(target) == []
    assert remove_stale_temporaries(tmp_path / "missing" / "decflow.pth") == []


def test_gma_checkpoint_initialises_stage_one_non_strictly(tmp_path, capsys):
    state = authors_state_dict(prefix="module.", tsv=GMA_TSV)
    path = tmp_path / "gma-sintel.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="update_block_head"):
        load_checkpoint(DecFlow(), path, strict=True)
    model = DecFlow()
    before_head = model.update_block_head.gru.convz1.weight.clone()
    report = load_checkpoint(model, path, strict=False)
    assert set(report.loaded) == {"fnet", "cnet", "update_block", "att"}
    assert set(report.initialised) == {
        "update_block_head",
        "dad_encoder",
        "dad_encoder.model.3 (unused stage)",
        "change_dim",
        "res1",
    }
    printed = capsys.readouterr().out
    assert "left at initialisation" in printed and "update_block_head" in printed
    assert torch.equal(model.update_block.gru.convz1.weight, state["module.update_block.gru.convz1.weight"])
    assert torch.equal(model.update_block_head.gru.convz1.weight, before_head)


def test_save_checkpoint_writes_authors_format_atomically(tmp_path, authors_file):
    model = DecFlow()
    load_checkpoint(model, authors_file, verbose=False)
    target = tmp_path / "out" / "decflow.pth"
    save_checkpoint(model, target)
    assert sorted(os.listdir(target.parent)) == ["decflow.pth"]  # no temporary left behind
    raw = torch.load(target, map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in raw)
    assert list(raw) == list(authors_state_dict())
    # and back again, also through a DataParallel-style wrapper
    again = DecFlow()
    load_checkpoint(torch.nn.DataParallel(again), target, verbose=False)
    assert _equal_to_authors(again)


def test_read_state_dict_accepts_training_state_files(tmp_path):
    state = {"model": authors_state_dict(), "step": 7}
    torch.save(state, tmp_path / "state.pth")
    assert set(read_state_dict(tmp_path / "state.pth")) == set(authors_state_dict(prefix=""))


def _torchvision_resnet50_file(tmp_path):
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(resnet.state_dict(), path)
    return resnet.state_dict(), path


def test_semantic_encoder_from_torchvision_weights(tmp_path):
    """Every tensor of the encoder is one tensor of the ResNet-50 file, each used once, found by
    value (every file tensor drawn at random, so that no two are equal), not by the mapping's names;
    the file's tensors left over are exactly layer4's and fc's, which the encoder has no room for."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None).state_dict()  # He-initialised convolutions: all distinct
    generator = torch.Generator().manual_seed(0)

    def distinct(i: int, key: str, value: torch.Tensor) -> torch.Tensor:
        if not value.is_floating_point():
            return value + i  # num_batches_tracked
        if ".bn" in key or key.startswith("bn1") or "downsample.1" in key:  # 1, 0, 0, 1 in every norm
            noise = 0.1 * torch.randn(value.shape, generator=generator)
            return value + (noise.abs() if key.endswith("running_var") else noise)
        return value

    weights = {key: distinct(i, key, value) for i, (key, value) in enumerate(resnet.items())}
    path = tmp_path / "resnet50.pth"
    torch.save(weights, path)
    model = DecFlow()
    assert init_semantic_encoder(model, path) == str(path)
    encoder = model.dad_encoder.state_dict()
    by_value = {(tuple(v.shape), v.dtype, float(v.double().sum())): k for k, v in weights.items()}
    sources = [by_value.get((tuple(v.shape), v.dtype, float(v.double().sum()))) for v in encoder.values()]
    assert None not in sources and len(set(sources)) == len(sources) == 258
    assert all(torch.equal(value, weights[source]) for value, source in zip(encoder.values(), sources))
    assert {key.split(".")[0] for key in weights.keys() - set(sources)} == {"layer4", "fc"}
    # and each in its place: the stages the encoder runs compute torchvision's stem, layer1, layer2 (with
    # the downsampling stride in the first 1x1 conv: v1)
    reference = torchvision.models.resnet50(weights=None)
    reference.load_state_dict(weights)
    reference.layer2[0].conv1.stride, reference.layer2[0].conv2.stride = (2, 2), (1, 1)  # ResNet v1, as the spec
    x = torch.randn(1, 3, 64, 64, generator=generator)
    with torch.no_grad():
        expected = torch.nn.Sequential(*list(reference.children())[:6]).eval()(x)  # conv1 .. layer2
        stages = model.dad_encoder.model[: model.dad_encoder.used_stages].eval()
        torch.testing.assert_close(stages(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_semantic_encoder_from_pytorchcv_naming_matches_torchvision(tmp_path):
    weights, path = _torchvision_resnet50_file(tmp_path)
    mapped = semantic_state_from_resnet50(weights, "torchvision")
    pytorchcv = {
        "features.init_block." + k[len("model.0.") :]
        if k.startswith("model.0.")
        else "features.stage" + k[len("model.") :]: v
        for k, v in mapped.items()
    }
    pytorchcv["output.weight"] = torch.zeros(1000, 2048)
    torch.save(pytorchcv, tmp_path / "pytorchcv.pth")
    a, b = DecFlow(), DecFlow()
    init_semantic_encoder(a, path)
    init_semantic_encoder(b, tmp_path / "pytorchcv.pth")
    assert all(
        torch.equal(x, y) for x, y in zip(a.dad_encoder.state_dict().values(), b.dad_encoder.state_dict().values())
    )


def test_semantic_encoder_without_weights_warns_loudly(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.warns(UserWarning, match="RANDOM"):
        assert init_semantic_encoder(DecFlow()) == "random initialisation"
