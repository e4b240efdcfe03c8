"""Parity with the authors' forward pass, recorded in the shared specification folder.

The fixture (weights from `fill_weights.py`, images and outputs in `expected_outputs.npz`)
is only available to the project's developers and CI; elsewhere these tests skip.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from core.network import DecFlow
from tests.model_helpers import SHARED_SPEC

PARITY = SHARED_SPEC / "parity"
pytestmark = pytest.mark.skipif(not (PARITY / "expected_outputs.npz").is_file(),
                                reason="shared parity fixture not available")
TOLERANCE = 1e-3  # px


@pytest.fixture(scope="module")
def fixture():
    spec = importlib.util.spec_from_file_location("fill_weights", PARITY / "fill_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    weights = {k: torch.from_numpy(v) for k, v in module.filled_state_dict(SHARED_SPEC / "decflow_state_dict.tsv").items()}
    expected = dict(np.load(PARITY / "expected_outputs.npz"))
    image1 = torch.from_numpy(expected["image1"])[None]
    image2 = torch.from_numpy(expected["image2"])[None]
    return weights, expected, image1, image2


def _model(weights, **options) -> DecFlow:
    model = DecFlow(**options)
    model.load_state_dict(weights, strict=True)
    return model.eval()


@pytest.mark.parametrize("prefix, options", [("content", {}), ("pos_and_content", {"position_and_content": True})])
@torch.no_grad()
def test_parity_with_reference(fixture, prefix, options):
    weights, expected, image1, image2 = fixture
    model = _model(weights, **options)
    facial, head = model(image1, image2, iters=3)
    np.testing.assert_allclose(torch.stack(facial).numpy(), expected[f"{prefix}_facial_train3"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(torch.stack(head).numpy(), expected[f"{prefix}_head_train3"], atol=TOLERANCE, rtol=0)
    out = model(image1, image2, iters=12, test_mode=True)
    np.testing.assert_allclose(out.facial.numpy(), expected[f"{prefix}_facial_test12"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(out.head.numpy(), expected[f"{prefix}_head_test12"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(out.expression.numpy(),
                               expected[f"{prefix}_facial_test12"] - expected[f"{prefix}_head_test12"],
                               atol=2 * TOLERANCE, rtol=0)


@torch.no_grad()
def test_parity_with_flow_init(fixture):
    weights, expected, image1, image2 = fixture
    out = _model(weights)(image1, image2, iters=6, flow_init=torch.full((1, 2, 20, 24), 1.5), test_mode=True)
    np.testing.assert_allclose(out.facial.numpy(), expected["flowinit_facial_test6"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(out.head.numpy(), expected["flowinit_head_test6"], atol=TOLERANCE, rtol=0)
