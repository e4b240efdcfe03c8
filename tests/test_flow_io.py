"""Flow file formats, frame reading and flow visualisation."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from core.errors import UserError
from core.utils import flow_io, flow_viz


@pytest.fixture
def flow() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(7, 11, 2)) * 20).astype(np.float32)


def _flo_bytes(width: int, height: int, n_values: int, magic: float = 202021.25) -> bytes:
    header = np.array([magic], "<f4").tobytes() + np.array([width, height], "<i4").tobytes()
    return header + np.arange(n_values, dtype="<f4").tobytes()


def test_flo_round_trip_is_exact_and_little_endian(tmp_path: Path, flow: np.ndarray) -> None:
    path = tmp_path / "a.flo"
    flow_io.write_flo(path, flow)
    assert path.stat().st_size == 12 + 7 * 11 * 2 * 4
    raw = path.read_bytes()
    assert np.frombuffer(raw[:4], "<f4")[0] == np.float32(202021.25)
    assert tuple(np.frombuffer(raw[4:12], "<i4")) == (11, 7)
    back = flow_io.read_flo(path)
    assert back.dtype == np.float32 and back.shape == (7, 11, 2)
    np.testing.assert_array_equal(back, flow)
    np.testing.assert_array_equal(flow_io.read_gen(path), flow)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "truncated"),
        (_flo_bytes(4, 3, 0)[:10], "truncated"),
        (_flo_bytes(4, 3, 4 * 3 * 2 - 1), "truncated"),
        (_flo_bytes(4, 3, 4 * 3 * 2, magic=1.0), "magic"),
        (_flo_bytes(0, 3, 0), "dimensions"),
        (_flo_bytes(-4, 3, 24), "dimensions"),
        (_flo_bytes(100000, 100000, 24), "truncated"),
        (_flo_bytes(4, 3, 4 * 3 * 2 + 1), "trailing"),
        (_flo_bytes(4, 3, 4 * 3 * 2) + b"x", "trailing"),
    ],
    ids=[
        "empty",
        "short-header",
        "truncated-data",
        "magic",
        "zero-width",
        "negative",
        "huge",
        "extra-value",
        "extra-byte",
    ],
)
def test_malformed_flo_raises_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken.flo"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        flow_io.read_flo(path)
    assert str(path) in str(info.value)


def test_write_flo_rejects_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="H, W, 2"):
        flow_io.write_flo(tmp_path / "x.flo", np.zeros((2, 4, 5), np.float32))


def test_pfm_round_trips(tmp_path: Path, flow: np.ndarray) -> None:
    flow_io.write_pfm(tmp_path / "f.pfm", flow)
    colour = flow_io.read_pfm(tmp_path / "f.pfm")
    assert colour.shape == (7, 11, 3)
    np.testing.assert_array_equal(colour[..., :2], flow)
    np.testing.assert_array_equal(colour[..., 2], 0)
    np.testing.assert_array_equal(flow_io.read_gen(tmp_path / "f.pfm"), flow)

    grey = flow[..., 0]
    flow_io.write_pfm(tmp_path / "g.pfm", grey)
    np.testing.assert_array_equal(flow_io.read_pfm(tmp_path / "g.pfm"), grey)


def test_pfm_big_endian_and_bottom_to_top(tmp_path: Path) -> None:
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / "be.pfm"
    path.write_bytes(b"Pf\n3 2\n1.0\n" + np.flipud(data).astype(">f4").tobytes())
    np.testing.assert_array_equal(flow_io.read_pfm(path), data)


def test_pfm_truncated_raises(tmp_path: Path) -> None:
    path = tmp_path / "t.pfm"
    path.write_bytes(b"PF\n3 2\n-1.0\n" + b"\0" * 10)
    with pytest.raises(ValueError, match=str(path)):
        flow_io.read_pfm(path)


def test_kitti_round_trip_quantised_with_validity(tmp_path: Path, flow: np.ndarray) -> None:
    valid = np.ones(flow.shape[:2], bool)
    valid[2, 3] = False
    path = tmp_path / "k.png"
    flow_io.write_kitti_flow(path, flow, valid)
    back, back_valid = flow_io.read_kitti_flow(path)
    assert back.dtype == np.float32 and back.shape == flow.shape
    np.testing.assert_allclose(back, flow, atol=0.5 / 64 + 1e-4)
    np.testing.assert_array_equal(back_valid, valid.astype(np.float32))


def test_kitti_rejects_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="512"):
        flow_io.write_kitti_flow(tmp_path / "k.png", np.full((2, 2, 2), 600, np.float32))


def test_read_image_grey_rgba_and_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = flow_io.read_image(tmp_path / "g.png")
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)

    rgba = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    np.testing.assert_array_equal(flow_io.read_image(tmp_path / "c.png"), rgba[..., :3])

    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=90)
    expected = np.array(Image.open(tmp_path / "c.jpg"))  # the reference reads frames with Pillow
    np.testing.assert_array_equal(flow_io.read_gen(tmp_path / "c.jpg"), expected)


def test_read_image_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.jpg"):
        flow_io.read_image(bad)
    with pytest.raises(FileNotFoundError):
        flow_io.read_image(tmp_path / "missing.jpg")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_files_the_libraries_refuse_with_a_value_error_are_user_errors_naming_them(tmp_path: Path) -> None:
    """Pillow says ValueError for a PNG whose text chunk inflates beyond its limit, the OS
    IsADirectoryError for a folder read as a .flo: both are bad input, named, one line."""
    stream = io.BytesIO()
    Image.new("RGB", (8, 8)).save(stream, format="PNG")
    png = stream.getvalue()
    header_end = 8 + 25  # the signature, then the IHDR chunk (13 bytes of data + 12 of framing)
    text = zlib.compress(b"a" * (PngImagePlugin.MAX_TEXT_CHUNK + 1))
    bomb = tmp_path / "frame.jpg"  # Pillow reads a PNG under a .jpg name as the frames' reader does
    bomb.write_bytes(png[:header_end] + _png_chunk(b"zTXt", b"comment\x00\x00" + text) + png[header_end:])
    with pytest.raises(ValueError, match="Decompressed data too large"):  # what Pillow itself says
        with Image.open(bomb) as image:
            image.load()
    with pytest.raises(UserError, match=f"^{bomb}: cannot read image \\(Decompressed data too large"):
        flow_io.read_image(bomb)
    folder = tmp_path / "flow.flo"
    folder.mkdir()
    with pytest.raises(UserError, match=f"^{folder}: cannot read .flo file"):
        flow_io.read_flo(folder)


def test_read_npy_refuses_pickles_and_names_the_file(tmp_path: Path) -> None:
    mask = np.arange(12, dtype=np.uint16).reshape(3, 4)
    np.save(tmp_path / "mask.npy", mask)
    for read in (flow_io.read_npy, flow_io.read_gen):
        back = read(tmp_path / "mask.npy")
        assert back.dtype == np.uint16 and np.array_equal(back, mask)
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"face": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "text.npy").write_text("not an array")
    for path, message in (
        (pickled, "a .npy array of Python objects, not of numbers"),
        (tmp_path / "text.npy", "not a .npy array but a file starting with b'not an a'"),
    ):
        for read in (flow_io.read_npy, flow_io.read_gen):
            with pytest.raises(ValueError, match=message) as info:
                read(path)
            assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError):
        flow_io.read_npy(tmp_path / "missing.npy")


def test_flow_to_image_basic_properties() -> None:
    flow = np.zeros((4, 5, 2), np.float32)
    white = flow_viz.flow_to_image(flow)
    assert white.shape == (4, 5, 3) and white.dtype == np.uint8
    assert (white == 255).all()  # zero flow is white, no division by zero

    flow[0, 0] = (1.0, 0.0)  # pure +x
    flow[1, 1] = (np.nan, np.inf)
    img = flow_viz.flow_to_image(flow)
    assert (img[1, 1] == 255).all()  # non-finite drawn as zero flow
    assert img[0, 0].tolist() != [255, 255, 255]


def test_flow_to_image_shared_scale() -> None:
    rng = np.random.default_rng(2)
    flow = rng.normal(size=(6, 6, 2)).astype(np.float32)
    max_mag = float(np.sqrt((flow**2).sum(-1)).max())
    np.testing.assert_array_equal(flow_viz.flow_to_image(flow), flow_viz.flow_to_image(flow, max_flow=max_mag))
    # the same flow on a scale twice as large is paler (closer to white)
    pale = flow_viz.flow_to_image(flow, max_flow=2 * max_mag).astype(int)
    assert pale.sum() > flow_viz.flow_to_image(flow).astype(int).sum()
    # per-flow normalisation hides a factor 2, a shared scale shows it
    np.testing.assert_array_equal(flow_viz.flow_to_image(2 * flow), flow_viz.flow_to_image(flow))
    assert not np.array_equal(flow_viz.flow_to_image(2 * flow, max_flow=2 * max_mag), pale)
    with pytest.raises(ValueError):
        flow_viz.flow_to_image(flow, max_flow=0)


def test_colour_wheel_legend() -> None:
    legend = flow_viz.colour_wheel_legend(65)
    assert legend.shape == (65, 65, 3) and legend.dtype == np.uint8
    assert (legend[32, 32] == 255).all()  # centre = zero flow
    assert (legend[0, 0] == 255).all()  # outside the circle
    assert len({tuple(legend[32, 63]), tuple(legend[63, 32]), tuple(legend[32, 1])}) == 3
