"""python -m core.mer extract: per-clip caches with manifests, reruns skip what matches, a damaged
frame fails its clip alone, DecFlow's inputs, a user's flow files checked before any work, and a
copy of face crops cropped as the whole frame resized (no padding)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.face.crop import FaceCropOptions
from core.face.detect import make_detector
from core.mer.cli import main
from core.mer.clips import Clip
from core.mer.corpora import frame_file, read_canonical
from core.mer.extract import INPUT_NAME, clip_crop
from core.mer.synthetic import ground_truth_file, write_synthetic_corpus

SIDE = 96  # the synthetic corpus's smallest frames (fast)


def corpus(root: Path, *, subjects: int, clips_per_subject: int) -> Path:
    return write_synthetic_corpus(root, subjects=subjects, clips_per_subject=clips_per_subject, size=SIDE)


def extract(csv: Path, out: Path, *options: str) -> None:
    main(["extract", "--dataset", f"synthetic={csv}", "--output", str(out), *options])


def summary(capsys: pytest.CaptureFixture) -> str:
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("extract:"))


def test_rerun_skips_done_clips_and_redoes_a_changed_one(tmp_path, capsys):
    csv = corpus(tmp_path / "corpus", subjects=2, clips_per_subject=3)
    extract(csv, tmp_path / "out", "--flow", "gt")
    assert "6 done, 0 skipped, 0 failed of 6 clips" in summary(capsys)
    folder = tmp_path / "out/cache/gt-expression-28/synthetic/s01/clip02"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["request"]["flow"] == {"method": "gt-expression"} and manifest["request"]["size"] == 28
    assert np.load(folder / INPUT_NAME).shape == (3, 28, 28)
    extract(csv, tmp_path / "out", "--flow", "gt")
    assert "0 done, 6 skipped" in summary(capsys)
    clip = read_canonical(csv)[1]
    np.save(ground_truth_file(clip, "expression"), np.ones((SIDE, SIDE, 2), np.float32))  # a changed input
    extract(csv, tmp_path / "out", "--flow", "gt")
    assert "1 done, 5 skipped" in summary(capsys)
    assert np.allclose(np.load(folder / INPUT_NAME)[:2], np.sqrt(0.5))  # u = v = 1 normalised by |(1, 1)|


def test_a_damaged_frame_fails_its_clip_alone(tmp_path, capsys):
    csv = corpus(tmp_path / "corpus", subjects=2, clips_per_subject=3)
    clip = read_canonical(csv)[5]  # s02/clip03
    frame_file(clip, clip.apex).write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    extract(csv, tmp_path / "out", "--flow", "dis", "--crop_size", "64")
    assert "5 done, 0 skipped, 1 failed of 6 clips" in summary(capsys)
    failures = (tmp_path / "out/cache/dis-28/failures.jsonl").read_text().splitlines()
    assert len(failures) == 1 and json.loads(failures[0])["sequence"] == "synthetic/s02/clip03"
    assert frame_file(clip, clip.apex).name in json.loads(failures[0])["error"]
    assert (tmp_path / "out/cache/dis-28/synthetic/s02/clip02" / INPUT_NAME).is_file()


def test_decflow_on_two_clips_writes_inputs_of_the_classifier_size(tmp_path, capsys, decflow_checkpoint):
    csv = corpus(tmp_path / "corpus", subjects=2, clips_per_subject=3)
    classes = tmp_path / "classes.csv"  # surprise left out: two classes, one clip each from the frozen list
    classes.write_text(
        "dataset,label,class\nsynthetic,negative,negative\nsynthetic,positive,positive\nsynthetic,surprise,\n"
    )
    chosen = [
        next(c for c in read_canonical(csv) if c.subject == s and c.label == label)
        for s, label in (("s01", "negative"), ("s02", "positive"))
    ]
    clips = tmp_path / "clips.csv"
    clips.write_text("dataset,subject,clip\n" + "".join(f"synthetic,{c.subject},{c.clip}\n" for c in chosen))
    options = ["--flow", "expression", "--weights", str(decflow_checkpoint), "--iters", "1", "--crop_size", "128"]
    extract(csv, tmp_path / "out", *options, "--classes", str(classes), "--clips", str(clips), "--device", "cpu")
    assert "2 done, 0 skipped, 0 failed of 2 clips" in summary(capsys)
    cache = tmp_path / "out/cache/expression-28/synthetic"
    inputs = [np.load(cache / c.subject / c.clip / INPUT_NAME) for c in chosen]
    assert [x.shape for x in inputs] == [(3, 28, 28)] * 2 and all(np.isfinite(x).all() for x in inputs)
    manifest = json.loads((cache / chosen[0].subject / chosen[0].clip / "manifest.json").read_text())
    request = manifest["request"]
    assert request["flow"]["method"] == "decflow-expression" and len(request["flow"]["weights_sha256"]) == 64
    assert request["crop"]["size"] == 128 and manifest["crop_chosen"]["crop_wh_px"] == [128, 128]


def test_missing_user_flow_file_is_named_before_any_work(tmp_path):
    csv = corpus(tmp_path / "corpus", subjects=2, clips_per_subject=3)
    flows = tmp_path / "flows"
    for clip in read_canonical(csv)[:-1]:  # all but s02/clip03
        (flows / "synthetic" / clip.subject).mkdir(parents=True, exist_ok=True)
        np.save(flows / "synthetic" / clip.subject / f"{clip.clip}.npy", np.zeros((8, 8, 2), np.float32))
    with pytest.raises(SystemExit, match="no flow file for clip synthetic/s02/clip03") as stop:
        extract(csv, tmp_path / "out", "--flow", f"files:{flows}")
    assert "\n" not in str(stop.value.code)
    assert not (tmp_path / "out/cache/files-flows-28/synthetic").exists()


def test_a_cropped_copy_resizes_the_whole_non_square_frame_without_padding(tmp_path):
    clip = Clip("synthetic", "s01", "clip01", tmp_path, 1, 2, "negative", 2)
    frame = np.zeros((40, 60, 3), np.uint8)  # a 60x40 frame to a 32x32 crop: x by 32/60, y by 4/5
    frame[0] = 200  # the top row: padding by repeating the edge would copy it into the top rows
    face = FaceCropOptions(detector=make_detector("haar"), size=32)
    crop = clip_crop(clip, frame, frame, True, face).crop(frame)
    assert np.array_equal(crop, cv2.resize(frame, (32, 32), interpolation=cv2.INTER_AREA))
    # area averaging: output row 0 covers input rows [0, 1.25): 4/5 of the bright row -> 160; nothing below it
    assert (crop[0] == 160).all() and (crop[1:] == 0).all()
