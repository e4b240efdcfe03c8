"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest
import torch

from core import synthetic
from core.checkpoint import save_checkpoint
from core.network import DecFlow
from tests.model_helpers import SHARED_SPEC, require_shared

# No test touches the internet: the scripts run by the tests (in this process or as
# subprocesses) never download weights unless a test turns this off for its local server.
os.environ["DECFLOW_OFFLINE"] = "1"

#: Geometry of the session's synthetic FacialFlowNet copy (small, to keep tests fast).
SYNTHETIC_SUBJECTS = 2
SYNTHETIC_FRAMES = 3
SYNTHETIC_SIZE = (128, 128)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic FacialFlowNet dataset (train/val/test, 2 subjects x 3 frames, 128x128), read-only."""
    root = tmp_path_factory.mktemp("synthetic") / "FacialFlowNet"
    synthetic.generate(root, SYNTHETIC_SUBJECTS, SYNTHETIC_FRAMES, SYNTHETIC_SIZE, seed=0)
    return root


@pytest.fixture(scope="session")
def decflow_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random DecFlow in the authors' format (shared by the test modules of a session)."""
    path = tmp_path_factory.getbasetemp() / "decflow_seeded.pth"
    if not path.is_file():
        torch.manual_seed(1234)
        save_checkpoint(DecFlow(), path)
    return path


@pytest.fixture(scope="session")
def parity_fixture() -> Path:
    """The shared parity fixture's folder: its tests skip where it is missing, and fail
    under CI=true (`tests.model_helpers.require_shared`)."""
    return require_shared(SHARED_SPEC / "parity" / "expected_outputs.npz").parent
