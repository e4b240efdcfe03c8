"""Checkpoint I/O: the authors' format both ways, GMA initialisation, ImageNet weights."""
from __future__ import annotations

import os

import pytest
import torch
import torchvision

from core.checkpoint import (init_semantic_encoder, load_checkpoint, read_state_dict, save_checkpoint,
                             semantic_state_from_resnet50)
from core.network import DecFlow
from tests.model_helpers import GMA_TSV, authors_state_dict


@pytest.fixture(scope="module")
def authors_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "decflow-facialflownet.pth"
    torch.save(authors_state_dict(prefix="module."), path)
    return path


def _equal_to_authors(model: DecFlow) -> bool:
    expected = authors_state_dict(prefix="")
    return all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_authors_checkpoint_loads_strictly_with_and_without_prefix(tmp_path, prefix):
    path = tmp_path / "authors.pth"
    torch.save(authors_state_dict(prefix=prefix), path)
    model = DecFlow()
    report = load_checkpoint(model, path, strict=True, verbose=False)
    assert _equal_to_authors(model)
    assert not report.initialised
    assert set(report.loaded) >= {"fnet", "cnet", "update_block", "update_block_head", "att", "dad_encoder",
                                  "change_dim", "res1"}


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
    assert set(report.initialised) == {"update_block_head", "dad_encoder", "dad_encoder.model.3 (unused stage)",
                                       "change_dim", "res1"}
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
    weights, path = _torchvision_resnet50_file(tmp_path)
    model = DecFlow()
    assert init_semantic_encoder(model, path) == str(path)
    encoder = model.dad_encoder.model
    assert torch.equal(encoder[0].conv.conv.weight, weights["conv1.weight"])
    assert torch.equal(encoder[1].unit1.identity_conv.bn.running_var, weights["layer1.0.downsample.1.running_var"])
    assert torch.equal(encoder[2].unit4.body.conv3.conv.weight, weights["layer2.3.conv3.weight"])


def test_semantic_encoder_from_pytorchcv_naming_matches_torchvision(tmp_path):
    weights, path = _torchvision_resnet50_file(tmp_path)
    mapped = semantic_state_from_resnet50(weights, "torchvision")
    pytorchcv = {"features.init_block." + k[len("model.0."):] if k.startswith("model.0.")
                 else "features.stage" + k[len("model."):]: v for k, v in mapped.items()}
    pytorchcv["output.weight"] = torch.zeros(1000, 2048)
    torch.save(pytorchcv, tmp_path / "pytorchcv.pth")
    a, b = DecFlow(), DecFlow()
    init_semantic_encoder(a, path)
    init_semantic_encoder(b, tmp_path / "pytorchcv.pth")
    assert all(torch.equal(x, y) for x, y in zip(a.dad_encoder.state_dict().values(),
                                                  b.dad_encoder.state_dict().values()))


def test_semantic_encoder_without_weights_warns_loudly(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.warns(UserWarning, match="RANDOM"):
        assert init_semantic_encoder(DecFlow()) == "random initialisation"
