"""Shared pytest fixtures."""

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from core import synthetic
from core.checkpoint import save_checkpoint
from core.network import DecFlow
from core.synthetic.writer import SPLITS
from tests.model_helpers import SHARED_SPEC, require_shared

# No test touches the internet: the scripts run by the tests (in this process or as
# subprocesses) never download weights unless a test turns this off for its local server.
os.environ["DECFLOW_OFFLINE"] = "1"

#: Geometry of the session's synthetic FacialFlowNet copy (small, to keep tests fast).
SYNTHETIC_SUBJECTS = 2
SYNTHETIC_FRAMES = 3
SYNTHETIC_SIZE = (128, 128)


class SyntheticDatasets:
    """Synthetic FacialFlowNet datasets, each geometry written once per session and shared read-only;
    `copy` gives a test a private one that it may damage."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self._roots: dict[tuple, Path] = {}

    def __call__(
        self,
        *,
        subjects: int = SYNTHETIC_SUBJECTS,
        frames: int = SYNTHETIC_FRAMES,
        size: tuple[int, int] = SYNTHETIC_SIZE,
        seed: int = 0,
        splits: Sequence[str] = SPLITS,
    ) -> Path:
        """The dataset of `subjects` x `frames` frames of `size` per split, written by `synthetic.generate`."""
        key = (subjects, frames, tuple(size), seed, tuple(splits))
        if key not in self._roots:
            root = self._base / f"dataset{len(self._roots)}" / "FacialFlowNet"
            synthetic.generate(root, subjects, frames, size, seed=seed, splits=splits)
            self._roots[key] = root
        return self._roots[key]

    def copy(self, destination: Path, **geometry) -> Path:
        """A private, writable copy at `destination` of the dataset `self(**geometry)`."""
        return Path(shutil.copytree(self(**geometry), destination))


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDatasets:
    """The one builder of synthetic FacialFlowNet datasets for the tests (see `SyntheticDatasets`)."""
    return SyntheticDatasets(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def synthetic_root(synthetic_dataset: SyntheticDatasets) -> Path:
    """A synthetic FacialFlowNet dataset (train/val/test, 2 subjects x 3 frames, 128x128), read-only."""
    return synthetic_dataset()


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
