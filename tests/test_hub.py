"""hubconf.py through torch.hub.load(source="local"): the release weights, fetched through the
registry from a local HTTP server, or the untrained network."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from core import weights
from core.checkpoint import read_state_dict
from core.network import DecFlow
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
