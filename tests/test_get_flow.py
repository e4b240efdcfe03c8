"""get_flow.py: demo pair, odd sizes, grayscale/RGBA, frames folders, videos, errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import get_flow
from core.synthetic import render_sequence
from core.utils.frame_utils import read_flo

REPO = Path(__file__).resolve().parents[1]
ITERS = 2
HEADER = 22  # title strip above the panels


@pytest.fixture(scope="module")
def odd_frames() -> list[np.ndarray]:
    """Four synthetic 250x333 RGB frames."""
    return render_sequence((250, 333), 4, seed=7, emotion="happy").facial_frames


def run(*argv: str) -> list[Path]:
    args = get_flow.get_args_parser().parse_args([*argv, "--device", "cpu"])
    return get_flow.main(args)


def canvas_shape(height: int, width: int) -> tuple[int, int, int]:
    """Title strip + four panels + legend, rounded up to even sides (for MP4)."""
    h, w = height + HEADER, 4 * width + int(np.clip(height * 0.6, 96, 200))
    return h + h % 2, w + w % 2, 3


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, path
    return image[..., ::-1]


def test_demo_and_missing_default_checkpoint(decflow_checkpoint: Path, tmp_path: Path) -> None:
    """As real scripts: no arguments (no checkpoint in the working folder), then the demo pair."""
    script = str(REPO / "get_flow.py")
    proc = subprocess.run([sys.executable, script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    message = proc.stderr.strip()
    assert "Traceback" not in message and "\n" not in message
    assert "checkpoints/decflow-facialflownet.pth" in message and "checkpoints/README.md" in message
    assert "--model" in message

    proc = subprocess.run([sys.executable, script, "--model", str(decflow_checkpoint), "--iters", str(ITERS),
                           "--device", "cpu", "--output", "out"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    vis = read_rgb(tmp_path / "out" / "frame1_flow.png")  # the demo pair is 256x256
    assert vis.shape == canvas_shape(256, 256)


def test_odd_size_grayscale_and_rgba(odd_frames: list[np.ndarray], decflow_checkpoint: Path,
                                     tmp_path: Path) -> None:
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    Image.fromarray(odd_frames[0]).convert("L").save(first)
    Image.fromarray(odd_frames[1]).convert("RGBA").save(second)
    written = run("--model", str(decflow_checkpoint), "--image1", str(first), "--image2", str(second),
                  "--iters", str(ITERS), "--save_flo", "--output", str(tmp_path / "out"))
    assert written == [tmp_path / "out" / "first_flow.png"]
    flows = {kind: read_flo(tmp_path / "out" / f"first_{kind}.flo") for kind in ("facial", "head", "expression")}
    for flow in flows.values():
        assert flow.shape == (250, 333, 2) and np.isfinite(flow).all()
    np.testing.assert_allclose(flows["expression"], flows["facial"] - flows["head"], atol=1e-5)
    vis = read_rgb(written[0])
    assert vis.shape == canvas_shape(250, 333)
    # the input panel shows the (grayscale) first frame
    panel = vis[HEADER:, :333].astype(int)
    assert np.abs(panel[..., 0] - panel[..., 2]).max() <= 2


def test_frames_folder_natural_order_warm_start(decflow_checkpoint: Path, tmp_path: Path) -> None:
    frames = render_sequence((128, 160), 3, seed=3, emotion="sad").facial_frames
    folder = tmp_path / "frames"
    folder.mkdir()
    for name, frame in zip(("f1.jpg", "f2.png", "f10.jpg"), frames):  # natural order: f1, f2, f10
        Image.fromarray(frame).save(folder / name)
    (folder / "notes.txt").write_text("not a frame")
    out = tmp_path / "out"
    written = run("--model", str(decflow_checkpoint), "--frames", str(folder), "--iters", str(ITERS),
                  "--warm_start", "--max_flow", "4", "--save_flo", "--output", str(out))
    assert written == [out / "f1_flow.png", out / "f2_flow.png"]
    assert read_flo(out / "f2_facial.flo").shape == (128, 160, 2)


def test_video_stride_max_frames_and_mp4(decflow_checkpoint: Path, tmp_path: Path) -> None:
    frames = render_sequence((128, 128), 5, seed=5, emotion="surprise").facial_frames
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (128, 128))
    assert writer.isOpened()
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    out = tmp_path / "out"
    written = run("--model", str(decflow_checkpoint), "--video", str(video), "--stride", "2", "--max_frames", "3",
                  "--iters", str(ITERS), "--output", str(out))
    assert written == [out / "clip_000000_flow.png", out / "clip_000002_flow.png"]  # frames 0, 2, 4
    capture = cv2.VideoCapture(str(out / "clip_flow.mp4"))
    assert capture.isOpened()
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    ok, first = capture.read()
    capture.release()
    assert ok and first.shape[:2] == read_rgb(written[0]).shape[:2]


def test_visualisation_shares_one_scale() -> None:
    image = np.zeros((128, 128, 3), np.uint8)
    facial = np.zeros((128, 128, 2), np.float32)
    facial[..., 0] = 4.0
    head = facial / 2
    canvas, scale = get_flow.render_flow_panels(image, facial, head, facial - head)
    assert scale == pytest.approx(4.0)
    # head and expression are the same flow (2 px to the right): identical panels
    head_panel = canvas[HEADER:, 2 * 128:3 * 128]
    expression_panel = canvas[HEADER:, 3 * 128:4 * 128]
    np.testing.assert_array_equal(head_panel, expression_panel)
    _, fixed = get_flow.render_flow_panels(image, facial, head, facial - head, max_flow=10.0)
    assert fixed == 10.0


# ------------------------------------------------------------------ user errors: one line, no traceback
def _error(*argv: str) -> str:
    with pytest.raises(SystemExit) as error:
        run(*argv)
    text = str(error.value)
    assert text.startswith("get_flow.py: error:") and "\n" not in text
    return text


def test_user_errors(odd_frames: list[np.ndarray], decflow_checkpoint: Path, tmp_path: Path) -> None:
    model = ("--model", str(decflow_checkpoint))
    small = tmp_path / "small.png"
    Image.fromarray(odd_frames[0][:200, :300]).save(small)
    large = tmp_path / "large.png"
    Image.fromarray(odd_frames[1]).save(large)
    text = _error(*model, "--image1", str(small), "--image2", str(large))
    assert "small.png" in text and "large.png" in text and "200x300" in text and "250x333" in text

    assert "image2" in _error(*model, "--image1", str(small), "--image2", str(tmp_path / "missing.png"))
    assert "not found" in _error(*model, "--image1", str(small), "--image2", str(tmp_path / "missing.png"))
    assert "go together" in _error(*model, "--image1", str(small))
    assert "only one input" in _error(*model, "--image1", str(small), "--image2", str(large), "--frames", str(tmp_path))
    assert "checkpoint" in _error("--model", str(tmp_path / "none.pth"), "--image1", str(large), "--image2", str(large))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert "cannot read" in _error(*model, "--image1", str(small), "--image2", str(tmp_path / "broken.png"))

    lonely = tmp_path / "lonely"
    lonely.mkdir()
    Image.fromarray(odd_frames[0]).save(lonely / "only.png")
    assert "at least 2" in _error(*model, "--frames", str(lonely))
    assert "not found" in _error(*model, "--frames", str(tmp_path / "nowhere"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(odd_frames[0]).save(mixed / "a1.png")
    Image.fromarray(odd_frames[1][:128, :128]).save(mixed / "a2.png")
    assert "a1.png" in (text := _error(*model, "--frames", str(mixed), "--iters", "1")) and "a2.png" in text

    assert "video" in _error(*model, "--video", str(tmp_path / "none.mp4"))
    assert "cannot open video" in _error(*model, "--video", str(tmp_path / "broken.png"))
    assert "--max_flow" in _error(*model, "--max_flow", "0")
    assert "--stride" in _error(*model, "--frames", str(mixed), "--stride", "0")
