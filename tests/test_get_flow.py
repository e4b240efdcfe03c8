"""get_flow.py: demo pair, odd and tiny sizes, grayscale/RGBA, frames folders, videos, output
names, default checkpoints, damaged videos, errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import evaluate
import get_flow
from core.synthetic import render_sequence
from core.utils import flow_io, flow_viz
from core.utils.flow_io import read_flo

REPO = Path(__file__).resolve().parents[1]
ITERS = 2
HEADER = 22  # title strip above the panels


@pytest.fixture(scope="module")
def odd_frames() -> list[np.ndarray]:
    """Four synthetic RGB frames, 250 rows by 333 columns (333x250 px)."""
    return render_sequence((250, 333), 4, seed=7, emotion="happy").facial_frames


def run(*argv: str) -> list[Path]:
    args = get_flow.get_args_parser().parse_args([*argv, "--device", "cpu"])
    return get_flow.main(args)


def widest_title() -> int:
    """The widest panel title in this OpenCV build's font metrics, plus the 6 px margins on either
    side: "expression" at scale 0.5 is 84 px in OpenCV 4.14 and 78 px in 5.1, so no width is
    hard-coded."""
    return max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0] for t in flow_viz.PANEL_TITLES) + 12


def canvas_shape(height: int, width: int) -> tuple[int, int, int]:
    """Title strip + four panels + legend, rounded up to even sides (for MP4). Panels are at
    least as wide as the widest title and the legend at least 76 px high (a 32 px wheel and
    two lines of text)."""
    h, w = max(height, 76) + HEADER, 4 * max(width, widest_title()) + int(np.clip(height * 0.6, 96, 200))
    return h + h % 2, w + w % 2, 3


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, path
    return image[..., ::-1]


def test_demo_and_missing_default_checkpoint(decflow_checkpoint: Path, tmp_path: Path) -> None:
    """As real scripts: no arguments (no checkpoint in the working folder), then the demo pair."""
    script = str(REPO / "get_flow.py")
    proc = subprocess.run([sys.executable, script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    message = proc.stderr.strip()
    first = message.splitlines()[0]  # what is missing; the command to run on the next line
    assert "Traceback" not in message and len(first) < 200
    for name in ("checkpoints/decflow-facialflownet.pth", "checkpoints/decflow.pth", "--model"):
        assert name in first
    assert "python -m core.weights fetch decflow-facialflownet" in message.splitlines()[2]

    proc = subprocess.run(
        [
            sys.executable,
            script,
            "--model",
            str(decflow_checkpoint),
            "--iters",
            str(ITERS),
            "--device",
            "cpu",
            "--output",
            "out",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    vis = read_rgb(tmp_path / "out" / "demo_frame1-frame2_flow.png")  # the demo pair is 256x256
    assert vis.shape == canvas_shape(256, 256)


def test_odd_size_grayscale_and_rgba(
    odd_frames: list[np.ndarray], decflow_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    Image.fromarray(odd_frames[0]).convert("L").save(first)
    Image.fromarray(odd_frames[1]).convert("RGBA").save(second)
    written = run(
        "--model",
        str(decflow_checkpoint),
        "--image1",
        str(first),
        "--image2",
        str(second),
        "--iters",
        str(ITERS),
        "--save_flo",
        "--output",
        str(tmp_path / "out"),
    )
    name = f"{tmp_path.name}_first-second"  # <folder>_<stem1>-<stem2>
    assert written == [tmp_path / "out" / f"{name}_flow.png"]
    printed = capsys.readouterr().out
    flos = [tmp_path / "out" / f"{name}_{kind}.flo" for kind in ("facial", "head", "expression")]
    assert f"wrote {written[0]} (" in printed and f"wrote {', '.join(map(str, flos))}\n" in printed
    flows = {kind: read_flo(tmp_path / "out" / f"{name}_{kind}.flo") for kind in ("facial", "head", "expression")}
    for flow in flows.values():
        assert flow.shape == (250, 333, 2) and np.isfinite(flow).all()
    np.testing.assert_allclose(flows["expression"], flows["facial"] - flows["head"], atol=1e-5)
    vis = read_rgb(written[0])
    assert vis.shape == canvas_shape(250, 333)
    # the input panel shows the (grayscale) first frame
    panel = vis[HEADER:, :333].astype(int)
    np.testing.assert_allclose(panel[..., 0], panel[..., 2], rtol=0, atol=2)


def test_frames_folder_natural_order_warm_start(decflow_checkpoint: Path, tmp_path: Path) -> None:
    frames = render_sequence((128, 160), 3, seed=3, emotion="sad").facial_frames
    folder = tmp_path / "frames"
    folder.mkdir()
    for name, frame in zip(("f1.jpg", "f2.png", "f10.jpg"), frames):  # natural order: f1, f2, f10
        Image.fromarray(frame).save(folder / name)
    (folder / "notes.txt").write_text("not a frame")
    out = tmp_path / "out"
    written = run(
        "--model",
        str(decflow_checkpoint),
        "--frames",
        str(folder),
        "--iters",
        str(ITERS),
        "--warm_start",
        "--max_flow",
        "4",
        "--save_flo",
        "--output",
        str(out),
    )
    assert written == [out / "frames_f1-f2_flow.png", out / "frames_f2-f10_flow.png"]
    assert read_flo(out / "frames_f2-f10_facial.flo").shape == (128, 160, 2)


def test_video_stride_max_frames_and_mp4(decflow_checkpoint: Path, tmp_path: Path) -> None:
    frames = render_sequence((128, 128), 5, seed=5, emotion="surprise").facial_frames
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (128, 128))
    assert writer.isOpened()
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    out = tmp_path / "out"
    written = run(
        "--model",
        str(decflow_checkpoint),
        "--video",
        str(video),
        "--stride",
        "2",
        "--max_frames",
        "3",
        "--iters",
        str(ITERS),
        "--output",
        str(out),
    )
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
    canvas, scale = flow_viz.render_flow_panels(image, facial, head, facial - head)
    assert scale == pytest.approx(4.0)
    # head and expression are the same flow (2 px to the right): identical panels
    head_panel = canvas[HEADER:, 2 * 128 : 3 * 128]
    expression_panel = canvas[HEADER:, 3 * 128 : 4 * 128]
    np.testing.assert_array_equal(head_panel, expression_panel)
    _, fixed = flow_viz.render_flow_panels(image, facial, head, facial - head, max_flow=10.0)
    assert fixed == 10.0


def test_frames_in_batches_give_the_flow_of_one_pair_at_a_time(decflow_checkpoint: Path, tmp_path: Path) -> None:
    """--batch_size 2 on 3 pairs (a batch of 2, then 1): the same files and, in float32, the same flow."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(render_sequence((128, 160), 4, seed=5, emotion="sad").facial_frames):
        Image.fromarray(frame).save(folder / f"{i}.png")
    written = {}
    for batch in ("1", "2"):
        written[batch] = run(
            "--model",
            str(decflow_checkpoint),
            "--frames",
            str(folder),
            "--iters",
            str(ITERS),
            "--no-mixed_precision",
            "--save_flo",
            "--batch_size",
            batch,
            "--output",
            str(tmp_path / batch),
        )
    assert (
        [p.name for p in written["1"]]
        == [p.name for p in written["2"]]
        == [f"frames_{i}-{i + 1}_flow.png" for i in range(3)]
    )
    for i in range(3):
        for kind in ("facial", "head", "expression"):
            single, batched = (read_flo(tmp_path / batch / f"frames_{i}-{i + 1}_{kind}.flo") for batch in ("1", "2"))
            np.testing.assert_allclose(batched, single, rtol=0, atol=1e-4, equal_nan=False, err_msg=f"{i} {kind}")


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
    assert (
        "small.png" in text and "large.png" in text and "300x200 px" in text and "333x250 px" in text
    )  # W x H (docs/outputs.md)

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

    text = _error(*model, "--image1", str(tmp_path), "--image2", str(large))
    assert f"image1 {tmp_path} is a directory" in text and "--frames" in text
    assert f"video {tmp_path} is a directory" in _error(*model, "--video", str(tmp_path))
    assert "is a file, not a folder" in _error(*model, "--frames", str(large))
    assert "video" in _error(*model, "--video", str(tmp_path / "none.mp4"))
    assert "cannot open video" in _error(*model, "--video", str(tmp_path / "broken.png"))
    assert "--max_flow" in _error(*model, "--max_flow", "0")
    assert "--stride" in _error(*model, "--frames", str(mixed), "--stride", "0")
    assert "--batch_size must be >= 1" in _error(*model, "--frames", str(mixed), "--batch_size", "0")
    assert "--batch_size 1" in _error(*model, "--frames", str(mixed), "--warm_start", "--batch_size", "2")


def test_output_is_checked_before_any_work(tmp_path: Path) -> None:
    """A bad --output is reported before the model (here: a missing one) is even looked at."""
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    pair = ("--model", str(tmp_path / "missing.pth"), "--image1", str(image), "--image2", str(image))
    assert _error(*pair, "--output", str(image)) == f"get_flow.py: error: --output {image} is a file, not a folder"
    text = _error(*pair, "--output", str(image / "sub"))
    assert text.startswith(f"get_flow.py: error: --output {image / 'sub'}: cannot create") and str(image) in text
    assert "missing.pth" in _error(*pair, "--output", str(tmp_path / "new"))  # a good --output gets further
    assert not (tmp_path / "new").exists()  # and is not created for a run that fails


# ------------------------------------------------------------------ tiny images
def _random_pair(
    folder: Path, size: tuple[int, int], names: tuple[str, str] = ("a.png", "b.png"), seed: int = 0
) -> tuple[Path, Path, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in names]
    for name, image in zip(names, images):
        Image.fromarray(image).save(folder / name)
    return folder / names[0], folder / names[1], images[0]


@pytest.mark.parametrize("size", [(20, 30), (32, 32)])
def test_tiny_images_work(size: tuple[int, int], decflow_checkpoint: Path, tmp_path: Path) -> None:
    first, second, image = _random_pair(tmp_path / "tiny", size)
    written = run(
        "--model",
        str(decflow_checkpoint),
        "--image1",
        str(first),
        "--image2",
        str(second),
        "--iters",
        "1",
        "--save_flo",
        "--output",
        str(tmp_path / "out"),
    )
    assert written == [tmp_path / "out" / "tiny_a-b_flow.png"]
    assert read_flo(tmp_path / "out" / "tiny_a-b_facial.flo").shape == (*size, 2)
    vis = read_rgb(written[0])
    assert vis.shape == canvas_shape(*size)
    height, width = size
    np.testing.assert_array_equal(vis[HEADER : HEADER + height, :width], image)  # the input panel, lossless PNG
    assert (vis[HEADER + height + 1 :, :width] == 255).all()  # white margin below it


# ------------------------------------------------------------------ output names
def test_output_names_are_unique_per_pair(
    decflow_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = ("--model", str(decflow_checkpoint), "--iters", "1", "--output", str(tmp_path / "out"))
    # two pairs with the same file names in different folders: no overwriting
    for folder in ("seq1", "seq2"):
        first, second, _ = _random_pair(tmp_path / folder, (24, 24), ("0001.png", "0002.png"))
        run(*model, "--image1", str(first), "--image2", str(second))
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"seq1_0001-0002_flow.png", "seq2_0001-0002_flow.png"}
    # one folder, a stem shared by a .jpg and a .png: the extension tells them apart
    _random_pair(tmp_path / "frames", (24, 24), ("0001.jpg", "0001.png"))
    _random_pair(tmp_path / "frames", (24, 24), ("0002.png", "0003.png"), seed=1)
    capsys.readouterr()
    written = run(*model, "--frames", str(tmp_path / "frames"), "--save_flo")
    names = ["frames_0001_jpg-0001_png", "frames_0001_png-0002", "frames_0002-0003"]
    assert written == [tmp_path / "out" / f"{name}_flow.png" for name in names]
    printed = capsys.readouterr().out
    assert f"wrote 3 visualisations to {tmp_path / 'out'}/: {names[0]}_flow.png ... {names[-1]}_flow.png (" in printed
    assert (
        f"wrote 9 flow files to {tmp_path / 'out'}/: {names[0]}_{{facial,head,expression}}.flo ... "
        f"{names[-1]}_{{facial,head,expression}}.flo"
    ) in printed
    assert all(
        (tmp_path / "out" / f"{name}_{kind}.flo").is_file()
        for name in names
        for kind in ("facial", "head", "expression")
    )


def test_save_formats_hold_the_same_flows(decflow_checkpoint: Path, tmp_path: Path) -> None:
    """--save_format pfm|kitti|npy write the flows --save_flo writes (KITTI: to 1/64 px)."""
    first, second, _ = _random_pair(tmp_path / "pair", (24, 24))
    model = ("--model", str(decflow_checkpoint), "--iters", "1", "--image1", str(first), "--image2", str(second))
    run(*model, "--save_flo", "--output", str(tmp_path / "flo"))
    readers = {
        "pfm": lambda p: flow_io.read_pfm(p)[..., :2],
        "npy": np.load,
        "kitti": lambda p: flow_io.read_kitti_flow(p)[0],
    }
    for fmt, extension in (("pfm", ".pfm"), ("npy", ".npy"), ("kitti", ".png")):
        run(*model, "--save_format", fmt, "--output", str(tmp_path / fmt))
        for kind in ("facial", "head", "expression"):
            expected = read_flo(tmp_path / "flo" / f"pair_a-b_{kind}.flo")
            np.testing.assert_allclose(
                readers[fmt](tmp_path / fmt / f"pair_a-b_{kind}{extension}"),
                expected,
                atol=1 / 64 if fmt == "kitti" else 0,
            )
    assert "does not go with" in _error(*model, "--save_flo", "--save_format", "npy")


def test_a_name_repeated_within_a_run_is_disambiguated(decflow_checkpoint: Path, tmp_path: Path) -> None:
    """a.jpg, a.png, a_jpg.png, a_png.jpg: pairs 1 and 3 both read `a_jpg-a_png`."""
    folder = tmp_path / "f"
    _random_pair(folder, (24, 24), ("a.jpg", "a.png"))
    _random_pair(folder, (24, 24), ("a_jpg.png", "a_png.jpg"), seed=1)
    out = tmp_path / "out"
    written = run("--model", str(decflow_checkpoint), "--iters", "1", "--frames", str(folder), "--output", str(out))
    assert written == [out / "f_a_jpg-a_png_flow.png", out / "f_a_png-a_jpg_flow.png", out / "f_a_jpg-a_png_2_flow.png"]
    assert all(path.is_file() for path in written)


# ------------------------------------------------------------------ default checkpoint
def test_default_checkpoint_release_first_then_seed_training(
    decflow_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    first, second, _ = _random_pair(tmp_path / "pair", (24, 24))
    argv = ("--image1", str(first), "--image2", str(second), "--iters", "1", "--output", "out")
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(decflow_checkpoint, tmp_path / "checkpoints" / "decflow.pth")  # after the seed training
    assert run(*argv) == [Path("out") / "pair_a-b_flow.png"]
    assert "checkpoint: checkpoints/decflow.pth (default" in capsys.readouterr().out
    # the authors' release comes first (a broken one here, so the message says which file was taken)
    (tmp_path / "checkpoints" / "decflow-facialflownet.pth").write_bytes(b"<html>not found</html>")
    text = _error(*argv)
    assert text == (
        "get_flow.py: error: checkpoints/decflow-facialflownet.pth: not a PyTorch checkpoint "
        "(neither a zip archive nor a pickle)"
    )
    assert "checkpoint: checkpoints/decflow-facialflownet.pth (default" in capsys.readouterr().out


def test_evaluate_uses_the_default_checkpoint(
    decflow_checkpoint: Path,
    synthetic_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["--root", str(synthetic_root), "--iters", "1", "--max_pairs", "1", "--device", "cpu", "--no_progress"]
    with pytest.raises(SystemExit) as error:
        evaluate.main(evaluate.get_args_parser().parse_args(argv))
    assert "checkpoints/decflow-facialflownet.pth" in str(error.value) and "checkpoints/decflow.pth" in str(error.value)
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(decflow_checkpoint, tmp_path / "checkpoints" / "decflow.pth")
    capsys.readouterr()
    document = evaluate.main(evaluate.get_args_parser().parse_args(argv))
    assert document["meta"]["checkpoint"] == "checkpoints/decflow.pth" and document["pairs"] == 1
    assert "checkpoint: checkpoints/decflow.pth (default" in capsys.readouterr().out


# ------------------------------------------------------------------ damaged videos
def _write_video(path: Path, fourcc: str, frames: int, size: int = 64) -> None:
    """Noisy frames: the encoded frames, not the container's headers, make most of the file."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (size, size))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for i in range(frames):
        frame = np.full((size, size, 3), 20 * i, np.uint8)
        frame[::4] = rng.integers(0, 256, (size // 4, size, 3), dtype=np.uint8)
        writer.write(frame)
    writer.release()


def _decodable_frames(path: Path) -> tuple[int, int]:
    capture = cv2.VideoCapture(str(path))
    announced, decoded = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0
    while capture.read()[0]:
        decoded += 1
    capture.release()
    return announced, decoded


def test_truncated_video_warns_with_both_numbers(
    decflow_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    whole = tmp_path / "whole.avi"
    _write_video(whole, "MJPG", 10)
    cut = tmp_path / "cut.avi"
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.55)])
    assert _decodable_frames(cut) == (10, 5), "OpenCV reads a cut AVI differently here"
    out = tmp_path / "out"
    written = run("--model", str(decflow_checkpoint), "--video", str(cut), "--iters", "1", "--output", str(out))
    assert len(written) == 4
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert warning == [
        f"get_flow.py: warning: video {cut}: decoding failed at frame 5 of the 10 frames its "
        "container announces (truncated or damaged file?): used 5 frames instead of 10, "
        "4 pairs instead of 9"
    ]
    assert "wrote 4 visualisations" in captured.out
    run(
        "--model",
        str(decflow_checkpoint),
        "--video",
        str(cut),
        "--iters",
        "1",
        "--output",
        str(out),
        "--stride",
        "2",
        "--max_frames",
        "4",
    )  # frames 0, 2, 4 of the 0, 2, 4, 6 asked for
    assert "used 3 frames instead of 4 (--stride 2 --max_frames 4), 2 pairs instead of 3" in capsys.readouterr().err
    run(
        "--model",
        str(decflow_checkpoint),
        "--video",
        str(cut),
        "--iters",
        "1",
        "--output",
        str(tmp_path / "out3"),
        "--max_frames",
        "3",
    )  # all the frames asked for decode: nothing to say (a new --output: the same input)
    assert "warning" not in capsys.readouterr().err


def test_undecodable_video_says_where_decoding_failed(decflow_checkpoint: Path, tmp_path: Path) -> None:
    video = tmp_path / "garbled.mp4"
    _write_video(video, "mp4v", 4)
    data = bytearray(video.read_bytes())
    start, end = data.find(b"mdat"), data.find(b"moov")
    assert 0 < start < end, "expected the mp4 index (moov) after the frames (mdat)"
    cut_from = start + (end - start) // 5  # garble from inside the first frame's data to the index
    data[cut_from : end - 4] = b"\xff" * (end - 4 - cut_from)
    video.write_bytes(bytes(data))
    assert _decodable_frames(video) == (4, 1), "OpenCV reads this garbled mp4 differently here"
    text = _error(
        "--model", str(decflow_checkpoint), "--video", str(video), "--iters", "1", "--output", str(tmp_path / "out")
    )
    assert text == (
        f"get_flow.py: error: video {video}: decoding failed at frame 1 of the 4 frames its container "
        "announces (truncated or damaged file?): used 1 frames instead of 4, 0 pairs instead of 3"
    )
