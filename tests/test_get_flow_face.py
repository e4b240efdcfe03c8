"""get_flow.py on real faces: --face_crop on the issue's astronaut clip (one fixed crop, the JSON,
--paste_back, --save_strain), --pairs lists (the same flow as --image1/--image2, errors naming the
row before any work), and the options' errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

import get_flow
from core.extract.outputs import CROP_COLOUR
from core.extract.pairs import read_pairs
from tests.face_helpers import astronaut_clip, contains, real_face

SIZE = 128  # --face_size of the tests: small, so the model runs fast
HEADER = 22  # the visualisation's title strip


def run(*argv: str) -> list[Path]:
    return get_flow.main(get_flow.get_args_parser().parse_args([*argv, "--device", "cpu", "--iters", "1"]))


def error_of(*argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        run(*argv)
    message = str(stop.value.code)
    assert message.startswith("get_flow.py: error: ") and "\n" not in message and len(message) < 220, message
    return message.removeprefix("get_flow.py: error: ")


def save_frames(folder: Path, frames: list[np.ndarray]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:04d}.png" for i in range(len(frames))]
    for path, frame in zip(paths, frames):
        Image.fromarray(frame).save(path)
    return paths


def resize(image: np.ndarray, side: int) -> np.ndarray:
    """As the crop resizes: area averaging to shrink, bilinear to enlarge."""
    shrink = side < image.shape[0]
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def test_face_crop_on_the_astronaut_clip(decflow_checkpoint: Path, tmp_path: Path) -> None:
    """About 25 s on 2 loaded cores: Haar on four 1280x720 frames, three pairs at 128 px, then a
    one-row pair list twice (two more detections each)."""
    frames = astronaut_clip(4)
    save_frames(tmp_path / "clip", frames)
    out = tmp_path / "out"
    model = ("--model", str(decflow_checkpoint))
    face = ("--face_crop", "--face_size", str(SIZE))
    run(
        *model,
        "--frames",
        str(tmp_path / "clip"),
        *face,
        "--paste_back",
        "--save_format",
        "npy",
        "--save_strain",
        "--output",
        str(out),
    )
    record = json.loads((out / "clip_face.json").read_text())
    x, y, side, same = record["box_xywh_frame_px"]
    assert side == same and record["crop_px_per_frame_px"] == SIZE / side and record["frame_wh_px"] == [1280, 720]
    assert record["detector"].startswith("haar") and record["failed"] == [] and len(record["sampled"]) == 4
    for i in range(4):  # the one crop holds the real face in every frame, and the face fills half of it or more
        assert contains((x, y, side, side), real_face(i)), (i, record["box_xywh_frame_px"])
    assert real_face(0)[2] / side >= 0.5
    for i, name in enumerate(["clip_0000-0001", "clip_0001-0002", "clip_0002-0003"]):
        picture = np.asarray(Image.open(out / f"{name}_flow.png").convert("RGB"))
        np.testing.assert_array_equal(
            picture[HEADER : HEADER + SIZE, :SIZE], resize(frames[i][y : y + side, x : x + side], SIZE)
        )
        crop_flows = {kind: np.load(out / f"{name}_{kind}.npy") for kind in ("facial", "head", "expression")}
        for kind, flow in crop_flows.items():
            full = np.load(out / f"{name}_{kind}_full.npy")
            expected = np.full((720, 1280, 2), np.nan, np.float32)
            expected[y : y + side, x : x + side] = resize(flow, side) * (side / SIZE)
            np.testing.assert_allclose(full, expected, rtol=1e-5, atol=1e-6)  # NaN where expected is NaN
        u, v = (crop_flows["expression"][..., k].astype(np.float64) for k in (0, 1))
        (u_y, u_x), (v_y, v_x) = np.gradient(u), np.gradient(v)
        expected_strain = np.sqrt(u_x**2 + v_y**2 + 0.5 * (u_y + v_x) ** 2)
        np.testing.assert_allclose(np.load(out / f"{name}_strain_magnitude.npy"), expected_strain, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(np.load(out / f"{name}_strain.npy")[..., 2], 0.5 * (u_y + v_x), atol=1e-6)
    with open(out / "clip_strain.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == ["clip_0000-0001", "clip_0001-0002", "clip_0002-0003"]
    fx, fy, fw, fh = ((v - o) * SIZE / side for v, o in zip(record["face_xywh_frame_px"], (x, y, 0, 0)))
    cols = slice(int(np.ceil(fx - 0.5)), int(np.ceil(fx + fw - 0.5)))
    rows_ = slice(int(np.ceil(fy - 0.5)), int(np.ceil(fy + fh - 0.5)))
    head = np.load(out / "clip_0000-0001_head.npy")
    expected_head = np.linalg.norm(head, axis=-1)[rows_, cols].mean()
    assert float(rows[0]["head_mean_crop_px"]) == pytest.approx(expected_head, rel=1e-5)

    # a pair list applies the crop per row: its own sampled frames, its own JSON
    (tmp_path / "list.csv").write_text("name,image1,image2\nonset_apex,clip/0000.png,clip/0003.png\n")
    run(*model, "--pairs", str(tmp_path / "list.csv"), *face, "--output", str(out))
    row = json.loads((out / "onset_apex_face.json").read_text())
    assert len(row["sampled"]) == 2 and all(contains(tuple(row["box_xywh_frame_px"]), real_face(i)) for i in (0, 3))
    assert (out / "onset_apex_flow.png").is_file()
    # the crop's picture records its input too: a run stopped before its first pair's files is rerun as is
    (out / "onset_apex_flow.png").unlink()
    run(*model, "--pairs", str(tmp_path / "list.csv"), *face, "--output", str(out))
    assert (out / "onset_apex_flow.png").is_file()


def test_a_face_that_fills_the_frame_names_and_units(
    decflow_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The astronaut photo cut to her face (a 120x150 frame it fills, as a pre-cropped corpus's): the
    square is the frame's width, no padding, drawn in the picture, and every output names its axes,
    its pixels and its units (docs/outputs.md, Conventions). About 5 s on 2 loaded cores."""
    frame = np.ascontiguousarray(data.astronaut()[40:190, 165:285])  # Haar: the face at (13, 27), 93 px
    save_frames(tmp_path / "face", [frame, frame])
    out = tmp_path / "out"
    run("--model", str(decflow_checkpoint), "--frames", str(tmp_path / "face"), "--face_crop", "--face_size",
        str(SIZE), "--save_strain", "--output", str(out))  # fmt: skip
    record = json.loads((out / "face_face.json").read_text())
    # 93 px + 2 x 0.25 x 93 = 140 px > the 120 px width: 120 px, centred on y 73.5 -> top 14
    assert record["frame_wh_px"] == [120, 150] and record["box_xywh_frame_px"] == [0, 14, 120, 120]
    assert record["padding_frame_px"] == {"left": 0, "top": 0, "right": 0, "bottom": 0}
    assert record["face_xywh_frame_px"] == [13.0, 27.0, 93.0, 93.0] and record["crop_wh_px"] == [SIZE, SIZE]
    assert record["crop_px_per_frame_px"] == SIZE / 120 and record["margin_face_sides"] == 0.25
    picture = np.asarray(Image.open(out / "face_face.png").convert("RGB"))
    assert picture.shape == (150, 120, 3)
    green = (picture == CROP_COLOUR).all(axis=-1)
    assert green[14:134, [0, 119]].all() and green[[14, 133], :].all()  # the square's edges: the frame's sides
    assert not green[:13].any() and not green[135:].any()
    # the strain table: the face box in crop pixels, (13 - 0, 27 - 14, 93, 93) x 128 / 120
    with open(out / "face_strain.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    box = [float(row[f"box_{axis}_crop_px"]) for axis in "xywh"]
    assert box == [13.9, 13.9, 99.2, 99.2]
    # messages give sizes as width x height
    Image.fromarray(frame[:, :100]).save(tmp_path / "narrow.png")
    monkeypatch.chdir(tmp_path)  # short paths in the message
    message = error_of("--model", str(decflow_checkpoint), "--image1", "face/0000.png", "--image2", "narrow.png")
    assert message == (
        "face/0000.png (120x150 px) and narrow.png (100x150 px) differ in size; "
        "both images of a pair must have the same size"
    )


def _video(path: Path, frames: list[np.ndarray]) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()


def _decoded(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while (found := capture.read())[0]:
        frames.append(cv2.cvtColor(found[1], cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def test_a_pair_list_gives_the_flow_of_image1_image2(decflow_checkpoint: Path, tmp_path: Path) -> None:
    """About 10 s on 2 loaded cores: six small runs (two single pairs, four pair lists)."""
    rng = np.random.default_rng(11)
    texture = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    frames = [np.ascontiguousarray(np.roll(texture, 2 * i, axis=1)) for i in range(3)]
    a, b, _ = save_frames(tmp_path / "frames", frames)
    _video(tmp_path / "clip.mp4", frames)
    onset, apex = save_frames(tmp_path / "decoded", [_decoded(tmp_path / "clip.mp4")[k] for k in (0, 2)])
    model = ("--model", str(decflow_checkpoint), "--save_format", "npy")
    run(*model, "--image1", str(a), "--image2", str(b), "--output", str(tmp_path / "single"))
    run(*model, "--image1", str(onset), "--image2", str(apex), "--output", str(tmp_path / "single"))
    (tmp_path / "images.csv").write_text("name,image1,image2\nfirst,frames/0000.png,frames/0001.png\n")
    (tmp_path / "video.csv").write_text("frame2,frame1,name,video\n2,0,v_onset_apex,clip.mp4\n")  # any column order
    for listing in ("images", "video"):
        run(*model, "--pairs", str(tmp_path / f"{listing}.csv"), "--save_strain", "--output", str(tmp_path / "list"))
    for kind in ("facial", "head", "expression"):
        for listed, single in (("first", "frames_0000-0001"), ("v_onset_apex", "decoded_0000-0001")):
            np.testing.assert_array_equal(
                np.load(tmp_path / "list" / f"{listed}_{kind}.npy"),
                np.load(tmp_path / "single" / f"{single}_{kind}.npy"),
            )
    table = (tmp_path / "list" / "video_strain.csv").read_text().splitlines()
    assert table[0].startswith("name,facial_mean_frame_px,head_mean_frame_px,expression_mean_frame_px,strain_mean,")
    assert table[1].startswith("v_onset_apex,")
    assert len(table) == 2 and not (tmp_path / "list" / "v_onset_apex_strain.csv").exists()  # one table per list
    # a rerun on the same list replaces its own table; a table no run on this list wrote stays unless --overwrite
    images = ("--pairs", str(tmp_path / "images.csv"), "--save_strain", "--output", str(tmp_path / "list"))
    run(*model, *images)
    (tmp_path / "list" / "images_strain.csv").write_text("name,score\nsomeone else's,1\n")
    assert error_of(*model, *images).startswith("images_strain.csv in ")
    run(*model, *images, "--overwrite")
    assert (tmp_path / "list" / "images_strain.csv").read_text().startswith("name,facial_mean_frame_px,")
    # a table that an older version wrote on this list (columns without their pixels) is this list's too
    (tmp_path / "list" / "images_strain.csv").write_text(
        "name,facial,head,expression,strain,box_x,box_y,box_w,box_h\nfirst,1,1,0,0,0.0,0.0,60.0,40.0\n"
    )
    run(*model, *images)
    assert (tmp_path / "list" / "images_strain.csv").read_text().startswith("name,facial_mean_frame_px,")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name,image1,image3\n", r"line 1: unknown column 'image3'"),
        ("name,image1\n", r"line 1: columns name,image1 are neither"),
        (
            "name,image1,image2\na,f/0000.png,f/0001.png\nb,f/0001.png,f/0002.png\na,f/0000.png,f/0002.png\n",
            r"line 4: duplicate name 'a' \(also line 2\)",
        ),
        (
            "name,image1,image2\na,f/0000.png,f/0001.png\nb,f/0001.png,f/0009.png\n",
            r"line 3: image2 f/0009.png not found",
        ),
        ("name,image1,image2\na,f/0000.png\n", r"line 2: 2 values for the 3 columns"),
        ("name,image1,image2\na/b,f/0000.png,f/0001.png\n", r"line 2: name 'a/b' cannot name files"),
        ("name,video,frame1,frame2\nv,v.mp4,0,3\n", r"line 2: frame2 3 is past the end of v.mp4 \(3 frames, 0-based\)"),
        ("name,video,frame1,frame2\nv,v.mp4,0,x\n", r"line 2: frame2 'x' is not a frame index"),
        ("name,video,frame1,frame2\nv,list.csv,0,1\n", r"line 2: cannot open video"),
        ("name,image1,image2\n", r"lists no pair"),
    ],
)
def test_pair_list_errors_name_the_row(content: str, message: str, tmp_path: Path) -> None:
    save_frames(tmp_path / "f", [np.full((32, 32, 3), 60 * i, np.uint8) for i in range(3)])
    _video(tmp_path / "v.mp4", [np.full((32, 32, 3), 60 * i, np.uint8) for i in range(3)])
    (tmp_path / "list.csv").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_pairs(tmp_path / "list.csv")


def test_errors_come_before_any_work(tmp_path: Path) -> None:
    """No model is loaded (the checkpoint does not exist) and --output is never created."""
    save_frames(tmp_path / "f", [np.zeros((32, 32, 3), np.uint8)] * 2)
    (tmp_path / "list.csv").write_text("name,image1,image2\na,f/0000.png,f/0001.png\nb,f/0000.png,f/none.png\n")
    base = ("--model", str(tmp_path / "none.pth"), "--output", str(tmp_path / "out"))
    pair = ("--image1", str(tmp_path / "f" / "0000.png"), "--image2", str(tmp_path / "f" / "0001.png"))
    assert "line 3: image2 f/none.png not found" in error_of(*base, "--pairs", str(tmp_path / "list.csv"))
    assert error_of(*base, "--pairs", str(tmp_path / "list.csv"), "--video", "x.mp4") == (
        "--pairs lists its own frames: it does not go with --video"
    )
    assert error_of(*base, *pair, "--paste_back") == "--paste_back acts on the face crop: add --face_crop"
    assert error_of(*base, *pair, "--face_size", "256") == "--face_size acts on the face crop: add --face_crop"
    assert error_of(*base, *pair, "--face_crop", "--paste_back") == (
        "--paste_back writes flow files: give --save_format (or --save_flo)"
    )
    assert error_of(*base, *pair, "--face_crop", "--face_detector", "mtcnn").startswith("--face_detector must be")
    assert not (tmp_path / "out").exists()


def test_no_face_is_an_error_naming_the_input(decflow_checkpoint: Path, tmp_path: Path) -> None:
    save_frames(tmp_path / "grey", [np.full((160, 160, 3), 128, np.uint8)] * 3)
    message = error_of(
        "--model",
        str(decflow_checkpoint),
        "--frames",
        str(tmp_path / "grey"),
        "--face_crop",
        "--output",
        str(tmp_path / "out"),
    )
    assert message.startswith(f"no face found in frames folder {tmp_path / 'grey'} (haar, 3 frames sampled)")
    assert not list((tmp_path / "out").glob("*_flow.png"))
