"""Reading and writing optical flow files and video frames.

Supported formats:

* Middlebury ``.flo``: float32 magic 202021.25, int32 width, int32 height, then
  ``height * width * 2`` float32 values (x, y interleaved), all little-endian.
  Unlike the reference reader, malformed files (truncated, wrong magic number,
  impossible dimensions, trailing bytes) raise :class:`~core.errors.UserError` naming the file.
* PFM (``.pfm``): greyscale (``Pf``) or colour (``PF``) float maps as used by
  FlyingThings3D; flow is stored in the first two channels.
* KITTI 16-bit PNG flow: ``value = flow * 64 + 2**15`` in the R and G channels and a
  validity flag in B.
* Frames (JPEG/PNG/...): read with Pillow, like the reference, and always returned
  as ``uint8`` ``HxWx3`` RGB arrays. A JPEG whose image data is damaged (which libjpeg
  decodes into a wrong image with a mere warning) raises :class:`~core.errors.UserError` naming it
  (:func:`core.utils.jpeg.jpeg_damage`; each file is checked once per process).
* NumPy ``.npy`` arrays (masks): read without unpickling; an unreadable file raises
  :class:`~core.errors.UserError` naming it.

All flows are ``float32`` arrays of shape ``[H, W, 2]`` (channel 0 = x).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Union

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from core.errors import UserError
from core.utils.atomic import atomic_path
from core.utils.jpeg import jpeg_damage

PathLike = Union[str, os.PathLike]

FLO_MAGIC = 202021.25
_FLO_HEADER_BYTES = 12
_KITTI_SCALE = 64.0
_KITTI_OFFSET = 2.0**15
NPY_MAGIC = b"\x93NUMPY"
# First bytes of the files a mislabelled `.npy` most often is, and what to call each.
FILE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"PIEH", "a .flo flow file"),  # FLO_MAGIC as little-endian float32
    (b"PK\x03\x04", "a zip archive (an .npz file, or a PyTorch checkpoint)"),
    (b"\x80", "a Python pickle"),
    (b"version https://git-lfs.github.com/spec/", "a Git LFS pointer (`git lfs pull` fetches the file itself)"),
)


def _check_flow_array(flow: np.ndarray, path: PathLike) -> np.ndarray:
    """Return ``flow`` as a float32 ``[H, W, 2]`` array or raise naming ``path``."""
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2 or flow.shape[0] == 0 or flow.shape[1] == 0:
        raise ValueError(f"{path}: flow must have shape [H, W, 2] with H, W > 0, got {flow.shape}")
    return flow.astype(np.float32, copy=False)


def read_flo(path: PathLike) -> np.ndarray:
    """Read a Middlebury ``.flo`` file into a float32 ``[H, W, 2]`` array.

    Raises:
        FileNotFoundError: if the file does not exist.
        UserError: if the file cannot be read, is shorter than its header or than the size
            the header announces, has a wrong magic number, non-positive dimensions, or
            bytes after the flow data.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as err:  # a folder, no permission, an I/O error
        raise UserError(f"{path}: cannot read .flo file ({err})") from err
    if len(data) < _FLO_HEADER_BYTES:
        raise UserError(f"{path}: truncated .flo file ({len(data)} bytes, the header alone needs {_FLO_HEADER_BYTES})")
    magic = np.frombuffer(data, dtype="<f4", count=1, offset=0)[0]
    if magic != np.float32(FLO_MAGIC):
        raise UserError(f"{path}: not a .flo file (magic number {magic!r}, expected {FLO_MAGIC})")
    width, height = (int(v) for v in np.frombuffer(data, dtype="<i4", count=2, offset=4))
    if width <= 0 or height <= 0:
        raise UserError(f"{path}: invalid .flo dimensions {width}x{height}")
    expected = _FLO_HEADER_BYTES + width * height * 2 * 4
    if len(data) < expected:
        raise UserError(
            f"{path}: truncated .flo file: header says {width}x{height} "
            f"({expected} bytes) but the file has {len(data)} bytes"
        )
    if len(data) > expected:
        raise UserError(f"{path}: {len(data) - expected} unexpected trailing bytes after {width}x{height} flow data")
    flow = np.frombuffer(data, dtype="<f4", count=width * height * 2, offset=_FLO_HEADER_BYTES)
    return flow.reshape(height, width, 2).astype(np.float32)


def write_flo(path: PathLike, flow: np.ndarray) -> None:
    """Write a ``[H, W, 2]`` flow to a Middlebury ``.flo`` file (little-endian)."""
    flow = _check_flow_array(flow, path)
    height, width = flow.shape[:2]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(np.array([FLO_MAGIC], dtype="<f4").tobytes())
        f.write(np.array([width, height], dtype="<i4").tobytes())
        f.write(np.ascontiguousarray(flow, dtype="<f4").tobytes())


def write_npy(path: PathLike, flow: np.ndarray) -> None:
    """Write a ``[H, W, 2]`` flow as a float32 ``.npy`` array (no pickling)."""
    flow = _check_flow_array(flow, path)
    with atomic_path(path) as tmp:
        np.save(tmp, flow, allow_pickle=False)


def read_pfm(path: PathLike) -> np.ndarray:
    """Read a PFM file: ``[H, W]`` for greyscale (``Pf``), ``[H, W, 3]`` for colour (``PF``).

    Rows are returned top to bottom (PFM stores them bottom to top).
    """
    with open(path, "rb") as f:
        kind = f.readline().strip()
        if kind not in (b"PF", b"Pf"):
            raise UserError(f"{path}: not a PFM file (header {kind[:16]!r})")
        dims = re.fullmatch(rb"\s*(\d+)\s+(\d+)\s*", f.readline())
        if dims is None:
            raise UserError(f"{path}: malformed PFM dimension line")
        width, height = int(dims.group(1)), int(dims.group(2))
        try:
            scale = float(f.readline().strip())
        except ValueError as err:
            raise UserError(f"{path}: malformed PFM scale line") from err
        payload = f.read()
    if width <= 0 or height <= 0 or scale == 0:
        raise UserError(f"{path}: invalid PFM header ({width}x{height}, scale {scale})")
    channels = 3 if kind == b"PF" else 1
    count = width * height * channels
    if len(payload) != count * 4:
        raise UserError(
            f"{path}: PFM data has {len(payload)} bytes, expected {count * 4} for {width}x{height}x{channels}"
        )
    dtype = "<f4" if scale < 0 else ">f4"
    data = np.frombuffer(payload, dtype=dtype).astype(np.float32)
    shape = (height, width, 3) if channels == 3 else (height, width)
    return np.ascontiguousarray(np.flipud(data.reshape(shape)))


def write_pfm(path: PathLike, data: np.ndarray) -> None:
    """Write ``[H, W]``, ``[H, W, 2]`` (flow, padded with a zero channel) or ``[H, W, 3]`` to PFM."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 3 and data.shape[2] == 2:
        data = np.concatenate([data, np.zeros_like(data[..., :1])], axis=2)
    if not (data.ndim == 2 or (data.ndim == 3 and data.shape[2] == 3)):
        raise UserError(f"{path}: PFM data must be [H, W], [H, W, 2] or [H, W, 3], got {data.shape}")
    height, width = data.shape[:2]
    kind = b"PF" if data.ndim == 3 else b"Pf"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(kind + b"\n" + f"{width} {height}\n".encode() + b"-1.0\n")
        f.write(np.ascontiguousarray(np.flipud(data), dtype="<f4").tobytes())


def read_kitti_flow(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a KITTI 16-bit PNG flow file.

    Returns:
        ``(flow, valid)``: float32 ``[H, W, 2]`` flow and float32 ``[H, W]`` validity (0/1).
    """
    raw = cv2.imread(os.fspath(path), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR)
    if raw is None:
        raise UserError(f"{path}: cannot read KITTI flow PNG (missing or not an image)")
    if raw.dtype != np.uint16:
        raise UserError(f"{path}: KITTI flow PNG must be 16-bit, got {raw.dtype}")
    rgb = raw[:, :, ::-1].astype(np.float32)  # OpenCV decodes to BGR
    flow = (rgb[:, :, :2] - _KITTI_OFFSET) / _KITTI_SCALE
    valid = (rgb[:, :, 2] > 0).astype(np.float32)
    return flow, valid


def write_kitti_flow(path: PathLike, flow: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Write a flow (and optional validity mask, default all valid) as a KITTI 16-bit PNG.

    Values are quantised to 1/64 px and must lie within about +-512 px.
    """
    flow = _check_flow_array(flow, path)
    encoded = np.round(flow * _KITTI_SCALE + _KITTI_OFFSET)
    if encoded.min() < 0 or encoded.max() > 65535:
        raise UserError(f"{path}: flow exceeds the KITTI PNG range of +-512 px")
    valid_channel = np.ones(flow.shape[:2]) if valid is None else (np.asarray(valid) > 0)
    rgb = np.dstack([encoded, valid_channel]).astype(np.uint16)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(os.fspath(tmp), rgb[:, :, ::-1]):
            raise UserError(f"{path}: could not write KITTI flow PNG")


def read_image(path: PathLike) -> np.ndarray:
    """Read a frame as a ``uint8`` ``[H, W, 3]`` RGB array.

    Greyscale images are replicated to three channels and the alpha channel of RGBA
    images is dropped, as the reference does; 16-bit greyscale is scaled to 8 bits.
    """
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                stat = os.stat(path)
                damage = _jpeg_damage_once(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
                if damage:
                    raise UserError(
                        f"{path}: damaged JPEG image data ({damage}): the decoder would return a wrong image"
                    )
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                grey = np.asarray(img, dtype=np.float64)
                grey = np.clip(np.round(grey / 257.0), 0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
            return np.array(img.convert("RGB"), dtype=np.uint8)
    except (FileNotFoundError, UserError):
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:  # Pillow's ways to say "damaged"
        raise UserError(f"{path}: cannot read image ({err})") from err


@functools.lru_cache(maxsize=1 << 17)
def _jpeg_damage_once(path: str, size: int, mtime_ns: int) -> str | None:
    """`jpeg_damage` of the file, once per version of it (`size`, `mtime_ns`): about 0.1 s
    for a 480x640 frame."""
    return jpeg_damage(Path(path).read_bytes())


def read_npy(path: PathLike) -> np.ndarray:
    """Read a ``.npy`` array without unpickling anything (object arrays are refused).

    Raises:
        FileNotFoundError: if the file does not exist.
        UserError: naming the file and what it is, if it is not a readable ``.npy`` array
            of numbers (another format, an array of Python objects, a truncated file).
    """
    try:
        with open(path, "rb") as stream:
            head = stream.read(max(len(magic) for magic, _ in FILE_SIGNATURES))
    except FileNotFoundError:
        raise
    except OSError as err:
        raise UserError(f"{path}: cannot read .npy array ({err})") from err
    if not head.startswith(NPY_MAGIC):
        raise UserError(f"{path}: not a .npy array but {_file_kind(head)}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        if "Object arrays" in str(err):  # numpy's words for an array of pickled Python objects
            raise UserError(f"{path}: a .npy array of Python objects, not of numbers (never unpickled)") from err
        raise UserError(f"{path}: cannot read .npy array ({err})") from err


def _file_kind(head: bytes) -> str:
    """What a file that begins with `head` is, in words (FILE_SIGNATURES)."""
    if not head:
        return "an empty file"
    return next(
        (name for magic, name in FILE_SIGNATURES if head.startswith(magic)), f"a file starting with {head[:8]!r}"
    )


def read_gen(path: PathLike) -> np.ndarray:
    """Read a file according to its extension.

    ``.flo`` -> flow; ``.pfm`` -> flow (first two channels) or greyscale map;
    ``.npy`` -> the stored array; images (``.png``, ``.jpg``, ``.jpeg``, ``.ppm``,
    ``.bmp``) -> RGB ``uint8`` frame. KITTI PNG flow is not dispatched here because
    its extension is ambiguous; use :func:`read_kitti_flow`.
    """
    ext = Path(path).suffix.lower()
    if ext == ".flo":
        return read_flo(path)
    if ext == ".pfm":
        data = read_pfm(path)
        return data[:, :, :2] if data.ndim == 3 else data
    if ext == ".npy":
        return read_npy(path)
    if ext in (".png", ".jpg", ".jpeg", ".ppm", ".bmp"):
        return read_image(path)
    raise UserError(f"{path}: unsupported file extension {ext!r}")
