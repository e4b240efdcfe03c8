"""hubconf.py through torch.hub.load(source="local"): the release weights, fetched through the
registry from a local HTTP server or taken from a verified checkpoints/ file, the untrained
network, and the estimator that pads any size."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import hubconf
from core import weights
from core.checkpoint import read_state_dict
from core.inference import FlowEstimator
from core.network import DecFlow, DecFlowOutput
from core.weights import Checksum, WeightsUnavailable, git_blob_id
from tests.server_helpers import Route, Server

REPO = Path(__file__).resolve().parents[1]
RELEASE_PATH = "/checkpoints/decflow-facialflownet.pth"


@pytest.fixture
def hub(tmp_path, monkeypatch, decflow_checkpoint):
    """The session's DecFlow file served as the authors' release; torch.hub's folder in tmp_path."""
    server = Server()
    server.routes[RELEASE_PATH] = Route(decflow_checkpoint.read_bytes())
    monkeypatch.delenv(weights.OFFLINE_VARIABLE, raising=False)
    monkeypatch.setenv(weights.BASE_URL_VARIABLE, server.url)
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield server
    torch.hub.set_dir(previous)
    server.close()


def test_pretrained_model_has_the_release_weights(hub, decflow_checkpoint, tmp_path, monkeypatch):
    release = weights.REGISTRY[weights.RELEASE]
    monkeypatch.setitem(
        weights.REGISTRY,
        release.name,
        dataclasses.replace(release, checksum=Checksum("git-blob", git_blob_id(decflow_checkpoint.read_bytes()))),
    )
    model = torch.hub.load(str(REPO), "decflow", source="local", pretrained=True, progress=False)
    assert isinstance(model, DecFlow) and not model.training
    expected = read_state_dict(decflow_checkpoint)
    assert model.state_dict().keys() == expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())
    stored = tmp_path / "hub" / "checkpoints" / "decflow-facialflownet.pth"
    assert stored.read_bytes() == decflow_checkpoint.read_bytes()
    torch.hub.load(str(REPO), "decflow", source="local", pretrained=True)  # from the cache this time
    assert hub.requests == [RELEASE_PATH]


def test_pretrained_refuses_a_file_that_is_not_the_release(hub, tmp_path):
    """With the real registry entry, the served stand-in has the wrong git blob id: refused, deleted."""
    with pytest.raises(
        WeightsUnavailable,
        match="checksum mismatch: expected git blob id fbd307fcf6c3e1dcaa033d87b82cabfc6f71bf61, got",
    ):
        torch.hub.load(str(REPO), "decflow", source="local", pretrained=True, progress=False)
    assert list((tmp_path / "hub" / "checkpoints").iterdir()) == []


def test_untrained_model_downloads_nothing(hub, decflow_checkpoint):
    model = torch.hub.load(str(REPO), "decflow", source="local", pretrained=False)
    assert isinstance(model, DecFlow) and not model.training
    release = read_state_dict(decflow_checkpoint)
    assert not torch.equal(model.state_dict()["fnet.conv1.weight"], release["fnet.conv1.weight"])
    assert hub.requests == []


def as_release(monkeypatch, checkpoint: Path) -> None:
    """The registry's release entry with the checksum of `checkpoint` (a seeded stand-in)."""
    release = weights.REGISTRY[weights.RELEASE]
    checksum = Checksum("git-blob", git_blob_id(checkpoint.read_bytes()))
    monkeypatch.setitem(weights.REGISTRY, release.name, dataclasses.replace(release, checksum=checksum))


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """hubconf.py in a folder of its own, so that its checkpoints/ is that folder's, not the repository's
    (core is imported from the repository, on pytest's path)."""
    folder = tmp_path / "repo"
    folder.mkdir()
    shutil.copy(REPO / "hubconf.py", folder / "hubconf.py")
    return folder


def test_estimator_pads_any_size_and_uses_a_verified_checkpoints_file(hub, decflow_checkpoint, repo_copy, monkeypatch):
    as_release(monkeypatch, decflow_checkpoint)
    (repo_copy / "checkpoints").mkdir()
    shutil.copy(decflow_checkpoint, repo_copy / "checkpoints" / "decflow-facialflownet.pth")
    estimator = torch.hub.load(str(repo_copy), "decflow_estimator", source="local", device="cpu", iters=2)
    assert isinstance(estimator, FlowEstimator) and hub.requests == []  # the verified local file, no download
    expected_weights = read_state_dict(decflow_checkpoint)
    assert all(torch.equal(v, expected_weights[k]) for k, v in estimator.model.state_dict().items())

    torch.manual_seed(0)
    image1, image2 = (torch.rand(1, 3, 130, 150) * 255 for _ in range(2))
    out = estimator(image1, image2)
    assert isinstance(out, DecFlowOutput) and out.facial.shape == out.expression.shape == (1, 2, 130, 150)
    # by hand: replicate-pad to 136x152 (multiples of 8), split evenly (get_flow's symmetric mode), crop back
    padded = [F.pad(image, (1, 1, 3, 3), mode="replicate") for image in (image1, image2)]
    with torch.no_grad():
        reference = estimator.model(*padded, iters=2, test_mode=True)
    torch.testing.assert_close(out.facial, reference.facial[..., 3:133, 1:151], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.head, reference.head[..., 3:133, 1:151], atol=1e-4, rtol=0)
    tiny = estimator(image1[..., :40, :90], image2[..., :40, :90])  # padded up to 128 px per side
    assert tiny.facial.shape == (1, 2, 40, 90) and torch.isfinite(tiny.facial).all()


def test_an_unverified_checkpoints_file_is_said_and_the_hub_copy_used(
    hub, decflow_checkpoint, repo_copy, monkeypatch, capsys
):
    as_release(monkeypatch, decflow_checkpoint)
    (repo_copy / "checkpoints").mkdir()
    (repo_copy / "checkpoints" / "decflow-facialflownet.pth").write_bytes(b"not the release")
    model = torch.hub.load(str(repo_copy), "decflow", source="local", pretrained=True, progress=False)
    assert hub.requests == [RELEASE_PATH]  # fetched into torch.hub's cache
    expected_weights = read_state_dict(decflow_checkpoint)
    assert all(torch.equal(v, expected_weights[k]) for k, v in model.state_dict().items())
    err = capsys.readouterr().err
    assert f"note: {repo_copy / 'checkpoints' / 'decflow-facialflownet.pth'} is not the verified release" in err


def test_the_model_entry_documents_test_mode():
    text = " ".join(hubconf.decflow.__doc__.split())  # what torch.hub.help shows
    assert "test_mode=True" in text and "two lists of `iters` predictions" in text and "decflow_estimator" in text
