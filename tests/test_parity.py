"""Parity with the authors' forward pass: a golden file in the repository, and the full fixture.

The authors' implementation was recorded (CPU, fp32, eval mode) on one image pair with
deterministic weights; see the shared specification folder's `parity/README.md`. That
fixture (`expected_outputs.npz`, `fill_weights.py`) ships only to the project's
developers and CI, so two sets of tests check the same arithmetic:

* **golden** (always run): `tests/data/decflow_parity_golden.npz.xz` holds, copied from
  the fixture, the two input images (float32, exact), the final flows of the three
  test-mode calls (`content_*_test12`, `pos_and_content_*_test12`, `flowinit_*_test6`)
  on a fixed quarter of the pixels (whole 8x8 blocks where `(row // 8 + col // 8) % 4 == 0`,
  so every upsampling position and every block row and column is covered; values float32,
  exact) and the SHA-256 of the fixture's weights. The weights are rebuilt in the
  repository by `parity_state_dict` from `tests/data/decflow_state_dict.tsv` (our own
  implementation of the fixture's recipe, checked against that digest), and the model
  must match every stored value to within the fixture's 1e-3 px. Storage is float32 and
  exact, so the tolerance is the fixture's own, not widened for rounding. The file is
  about 0.6 MB (xz-compressed npz, no pickles).
* **fixture** (run when the shared folder exists): the training-mode lists and full
  images of `expected_outputs.npz`, the recipe against `fill_weights.py` array by array,
  and the golden file against the fixture.

Regenerate the golden file from the fixture with ``python -m tests.test_parity``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import lzma
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from core.network import DecFlow, DecFlowConfig
from tests.model_helpers import DATA, SHARED_SPEC, SPEC_TSV, read_spec, require_shared

PARITY = SHARED_SPEC / "parity"
GOLDEN = DATA / "decflow_parity_golden.npz.xz"
TOLERANCE = 1e-3  # px, as the fixture's README
SALT = "public:"  # of the fixture's weights recipe
BLOCK = 8  # the network's output stride: each 8x8 block is one convex-upsampled cell
#: name -> (DecFlow options, iterations, value of a constant flow_init or None): the test-mode
#: calls of the fixture whose final flows the golden file stores
GOLDEN_CALLS = {
    "content": ({}, 12, None),
    "pos_and_content": ({"position_and_content": True}, 12, None),
    "flowinit": ({}, 6, 1.5),
}
FIXTURE_KEYS = {"content": "{flow}_test12", "pos_and_content": "{flow}_test12", "flowinit": "{flow}_test6"}

# the shared folder's tests: skipped without it, failed under CI=true (conftest's parity_fixture)
needs_fixture = pytest.mark.usefixtures("parity_fixture")


# ------------------------------------------------------------------ the weights, rebuilt in the repository
def parity_tensor(key: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """The fixture's deterministic value of one state-dict entry (authors' key format).

    Floats come from numpy's PCG64 seeded with crc32(SALT + key), so they do not depend on
    the PyTorch version: `gamma` 0.5; BatchNorm running mean N(0, 0.1) and variance
    1 + 0.2|N(0, 1)|; 1-D weights of norm layers 1 + 0.1 N(0, 1); biases 0.05 N(0, 1);
    2-D tensors (position embeddings) N(0, 1); other weights N(0, 1) / sqrt(fan_in),
    times 0.1 for the flow head's last convolution. Integers: `rel_ind` the relative
    index table, anything else (`num_batches_tracked`) 0.
    """
    if dtype.startswith("int"):
        if key.endswith("rel_ind"):
            index = np.arange(shape[0])
            return (index[None, :] - index[:, None] + shape[0] - 1).astype(np.int64)
        return np.zeros(shape, np.int64)
    rng = np.random.default_rng(zlib.crc32((SALT + key).encode()))
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "gamma":
        return np.full(shape, 0.5, np.float32)
    if leaf == "running_mean":
        values = 0.1 * rng.standard_normal(shape)
    elif leaf == "running_var":
        values = 1.0 + 0.2 * np.abs(rng.standard_normal(shape))
    elif leaf == "weight" and len(shape) == 1 and any(part in key for part in (".bn", ".norm", "adjustment.1")):
        values = 1.0 + 0.1 * rng.standard_normal(shape)
    elif leaf == "bias":
        values = 0.05 * rng.standard_normal(shape)
    elif len(shape) == 2:
        values = rng.standard_normal(shape)
    else:
        scale = 0.1 if key.endswith("flow_head.conv2.weight") else 1.0
        values = rng.standard_normal(shape) * scale * np.sqrt(1.0 / int(np.prod(shape[1:])))
    return values.astype(np.float32)


def parity_state_dict(tsv: Path = SPEC_TSV) -> dict[str, np.ndarray]:
    """Every entry of the spec's key list (no `module.` prefix), filled by `parity_tensor`."""
    return {key: parity_tensor(key, shape, dtype) for key, shape, dtype in read_spec(tsv)}


def weights_sha256(state_dict: dict[str, np.ndarray]) -> str:
    """Digest of keys, dtypes, shapes and little-endian values, in key order."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = np.asarray(state_dict[key])
        digest.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def golden_pixels(height: int, width: int) -> np.ndarray:
    """Bool `[H, W]`: the whole 8x8 blocks where `(row // 8 + col // 8) % 4 == 0`."""
    rows, cols = np.meshgrid(np.arange(height) // BLOCK, np.arange(width) // BLOCK, indexing="ij")
    return (rows + cols) % 4 == 0


# ------------------------------------------------------------------ the golden file
def write_golden(path: Path = GOLDEN) -> None:
    """Write the golden file from the shared fixture (its outputs and its own weights' digest)."""
    module = _fill_weights_module()
    expected = dict(np.load(PARITY / "expected_outputs.npz"))
    pixels = golden_pixels(*expected["image1"].shape[1:])
    arrays = {
        "image1": expected["image1"],
        "image2": expected["image2"],
        "pixels": pixels,
        "weights_sha256": np.array(weights_sha256(module.filled_state_dict(SHARED_SPEC / "decflow_state_dict.tsv"))),
    }
    for name, template in FIXTURE_KEYS.items():
        for flow in ("facial", "head"):
            arrays[f"{name}_{flow}"] = expected[template.format(flow=f"{name}_{flow}")][0][:, pixels]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))


def _fill_weights_module():
    """The fixture's `fill_weights.py` (shared folder only)."""
    spec = importlib.util.spec_from_file_location("fill_weights", PARITY / "fill_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_golden(path: Path = GOLDEN) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(lzma.decompress(path.read_bytes())), allow_pickle=False) as data:
        return dict(data)


# ------------------------------------------------------------------ fixtures: one forward pass per call
@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return read_golden()


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(value) for key, value in parity_state_dict().items()}


@pytest.fixture(scope="module")
def outputs(golden, weights):
    """`outputs(name, mode)`: the model's outputs for a golden call (`mode` "test") or for its
    options in training mode with 3 iterations (`mode` "train3"), computed once."""
    image1 = torch.from_numpy(golden["image1"])[None]
    image2 = torch.from_numpy(golden["image2"])[None]
    cache: dict[tuple[str, str], object] = {}

    @torch.no_grad()
    def get(name: str, mode: str = "test"):
        if (name, mode) not in cache:
            options, iters, init = GOLDEN_CALLS[name]
            model = DecFlow(DecFlowConfig(**options))
            model.load_state_dict(weights, strict=True)
            model.eval()
            if mode == "train3":
                cache[name, mode] = model(image1, image2, iters=3)
            else:
                flow_init = None if init is None else torch.full((1, 2, 20, 24), init)
                cache[name, mode] = model(image1, image2, iters=iters, flow_init=flow_init, test_mode=True)
        return cache[name, mode]

    return get


# ------------------------------------------------------------------ golden tests (always run)
def test_golden_file_is_small_and_complete(golden) -> None:
    assert GOLDEN.stat().st_size < 1_000_000
    pixels = golden["pixels"]
    assert pixels.shape == (160, 192) and pixels.sum() == 160 * 192 // 4
    assert np.array_equal(pixels, golden_pixels(160, 192))
    assert golden["image1"].shape == golden["image2"].shape == (3, 160, 192)
    for name in GOLDEN_CALLS:
        for flow in ("facial", "head"):
            values = golden[f"{name}_{flow}"]
            assert values.dtype == np.float32 and values.shape == (2, pixels.sum()) and np.isfinite(values).all()


def test_in_repo_weights_are_the_fixtures(golden) -> None:
    """The recipe rebuilt here gives exactly the weights the reference was recorded with."""
    assert weights_sha256(parity_state_dict()) == str(golden["weights_sha256"])


@pytest.mark.parametrize("name", list(GOLDEN_CALLS))
def test_parity_with_golden_file(golden, outputs, name: str) -> None:
    out = outputs(name)
    pixels = torch.from_numpy(golden["pixels"])
    facial, head = out.facial[0][:, pixels].numpy(), out.head[0][:, pixels].numpy()
    np.testing.assert_allclose(facial, golden[f"{name}_facial"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(head, golden[f"{name}_head"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(
        out.expression[0][:, pixels].numpy(),
        golden[f"{name}_facial"] - golden[f"{name}_head"],
        atol=2 * TOLERANCE,
        rtol=0,
    )


def test_golden_values_tell_close_variants_apart(golden) -> None:
    """The stored pixels discriminate: the two attention variants differ there far beyond the tolerance."""
    assert np.abs(golden["content_facial"] - golden["pos_and_content_facial"]).max() > 10 * TOLERANCE
    assert np.abs(golden["content_head"] - golden["pos_and_content_head"]).max() > 10 * TOLERANCE


# ------------------------------------------------------------------ fixture tests (shared folder only)
def test_a_missing_fixture_skips_but_fails_under_ci(tmp_path) -> None:
    missing = tmp_path / "expected_outputs.npz"
    for environ in ({}, {"CI": "false"}, {"CI": ""}):
        with pytest.raises(pytest.skip.Exception, match="not available"):
            require_shared(missing, environ)
    for value in ("true", "TRUE", " true"):
        with pytest.raises(pytest.fail.Exception, match=f"CI=true: shared parity fixture {missing} not available"):
            require_shared(missing, {"CI": value})
    missing.write_bytes(b"")
    assert require_shared(missing, {"CI": "true"}) == missing


@pytest.fixture(scope="module")
def expected(parity_fixture) -> dict[str, np.ndarray]:
    return dict(np.load(parity_fixture / "expected_outputs.npz"))


@needs_fixture
def test_in_repo_weights_equal_fill_weights() -> None:
    reference = _fill_weights_module().filled_state_dict(SHARED_SPEC / "decflow_state_dict.tsv")
    ours = parity_state_dict()
    assert list(ours) == list(reference)
    for key, value in reference.items():
        assert ours[key].dtype == value.dtype and np.array_equal(ours[key], value), key


@needs_fixture
def test_golden_file_is_the_fixtures(golden, expected) -> None:
    assert np.array_equal(golden["image1"], expected["image1"]) and np.array_equal(golden["image2"], expected["image2"])
    for name, template in FIXTURE_KEYS.items():
        for flow in ("facial", "head"):
            stored = expected[template.format(flow=f"{name}_{flow}")][0][:, golden["pixels"]]
            assert np.array_equal(golden[f"{name}_{flow}"], stored)


@needs_fixture
@pytest.mark.parametrize("prefix", ["content", "pos_and_content"])
def test_parity_with_reference(outputs, expected, prefix: str) -> None:
    facial, head = outputs(prefix, "train3")
    np.testing.assert_allclose(torch.stack(facial).numpy(), expected[f"{prefix}_facial_train3"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(torch.stack(head).numpy(), expected[f"{prefix}_head_train3"], atol=TOLERANCE, rtol=0)
    out = outputs(prefix)
    np.testing.assert_allclose(out.facial.numpy(), expected[f"{prefix}_facial_test12"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(out.head.numpy(), expected[f"{prefix}_head_test12"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(
        out.expression.numpy(),
        expected[f"{prefix}_facial_test12"] - expected[f"{prefix}_head_test12"],
        atol=2 * TOLERANCE,
        rtol=0,
    )


@needs_fixture
def test_parity_with_flow_init(outputs, expected) -> None:
    out = outputs("flowinit")
    np.testing.assert_allclose(out.facial.numpy(), expected["flowinit_facial_test6"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(out.head.numpy(), expected["flowinit_head_test6"], atol=TOLERANCE, rtol=0)


if __name__ == "__main__":
    if not (PARITY / "expected_outputs.npz").is_file():
        sys.exit(f"python -m tests.test_parity: the shared parity fixture {PARITY} is not available")
    write_golden()
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)")
