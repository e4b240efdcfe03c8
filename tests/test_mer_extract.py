"""python -m core.mer extract: per-clip caches with manifests, reruns skip what matches, a damaged
frame fails its clip alone, DecFlow's inputs, a user's flow files checked before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.mer_helpers import install_stand_ins, write_corpus

install_stand_ins()

from core.mer.cli import main  # noqa: E402
from core.mer.extract import INPUT_NAME, whole_frame_crop  # noqa: E402


def extract(csv: Path, out: Path, *options: str) -> None:
    main(["extract", "--dataset", f"synthetic={csv}", "--output", str(out), *options])


def summary(capsys: pytest.CaptureFixture) -> str:
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("extract:"))


def test_rerun_skips_done_clips_and_redoes_a_changed_one(tmp_path, capsys):
    csv = write_corpus(tmp_path / "corpus", subjects=2, clips_per_subject=3)
    extract(csv, tmp_path / "out", "--flow", "gt")
    assert "6 done, 0 skipped, 0 failed of 6 clips" in summary(capsys)
    folder = tmp_path / "out/cache/gt-expression-28/synthetic/s00/clip01"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["request"]["flow"] == {"method": "gt-expression"} and manifest["request"]["size"] == 28
    assert np.load(folder / INPUT_NAME).shape == (3, 28, 28)
    extract(csv, tmp_path / "out", "--flow", "gt")
    assert "0 done, 6 skipped" in summary(capsys)
    np.save(tmp_path / "corpus/s00/clip01/gt_expression.npy", np.ones((64, 64, 2), np.float32))  # a changed input
    extract(csv, tmp_path / "out", "--flow", "gt")
    assert "1 done, 5 skipped" in summary(capsys)
    assert np.allclose(np.load(folder / INPUT_NAME)[:2], np.sqrt(0.5))  # u = v = 1 normalised by |(1, 1)|


def test_a_damaged_frame_fails_its_clip_alone(tmp_path, capsys):
    csv = write_corpus(tmp_path / "corpus", subjects=2, clips_per_subject=3)
    (tmp_path / "corpus/s01/clip02/img2.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    extract(csv, tmp_path / "out", "--flow", "dis", "--crop_size", "64")
    assert "5 done, 0 skipped, 1 failed of 6 clips" in summary(capsys)
    failures = (tmp_path / "out/cache/dis-28/failures.jsonl").read_text().splitlines()
    assert len(failures) == 1 and json.loads(failures[0])["sequence"] == "synthetic/s01/clip02"
    assert "img2.png" in json.loads(failures[0])["error"]
    assert (tmp_path / "out/cache/dis-28/synthetic/s01/clip01" / INPUT_NAME).is_file()


def test_decflow_on_two_clips_writes_inputs_of_the_classifier_size(tmp_path, capsys, decflow_checkpoint):
    csv = write_corpus(tmp_path / "corpus", subjects=2, clips_per_subject=2)
    classes = tmp_path / "classes.csv"
    classes.write_text("dataset,label,class\nsynthetic,negative,negative\nsynthetic,positive,positive\n")
    clips = tmp_path / "clips.csv"
    clips.write_text("dataset,subject,clip\nsynthetic,s00,clip00\nsynthetic,s01,clip01\n")
    options = ["--flow", "expression", "--weights", str(decflow_checkpoint), "--iters", "1", "--crop_size", "128"]
    extract(csv, tmp_path / "out", *options, "--classes", str(classes), "--clips", str(clips), "--device", "cpu")
    assert "2 done, 0 skipped, 0 failed of 2 clips" in summary(capsys)
    cache = tmp_path / "out/cache/expression-28/synthetic"
    inputs = [np.load(cache / key / INPUT_NAME) for key in ("s00/clip00", "s01/clip01")]
    assert [x.shape for x in inputs] == [(3, 28, 28)] * 2 and all(np.isfinite(x).all() for x in inputs)
    request = json.loads((cache / "s00/clip00/manifest.json").read_text())["request"]
    assert request["flow"]["method"] == "decflow-expression" and len(request["flow"]["weights_sha256"]) == 64
    assert request["crop"]["size"] == 128


def test_missing_user_flow_file_is_named_before_any_work(tmp_path):
    csv = write_corpus(tmp_path / "corpus", subjects=2, clips_per_subject=3)
    flows = tmp_path / "flows"
    for s in range(2):
        for c in range(3):
            if (s, c) != (1, 2):
                (flows / "synthetic" / f"s{s:02d}").mkdir(parents=True, exist_ok=True)
                np.save(flows / "synthetic" / f"s{s:02d}" / f"clip{c:02d}.npy", np.zeros((8, 8, 2), np.float32))
    with pytest.raises(SystemExit, match="no flow file for clip synthetic/s01/clip02") as stop:
        extract(csv, tmp_path / "out", "--flow", f"files:{flows}")
    assert "\n" not in str(stop.value.code)
    assert not (tmp_path / "out/cache/files-flows-28/synthetic").exists()


def test_whole_frame_crop_centres_a_non_square_frame():
    crop = whole_frame_crop((40, 60), 30)  # a 60x40 frame: a 60 px square, 10 px repeated above and below
    assert (crop.x, crop.y, crop.side, crop.scale) == (0, -10, 60, 0.5)
    frame = np.zeros((40, 60, 3), np.uint8)
    frame[0] = 200  # the top row, repeated into the padding
    assert (crop.crop(frame)[:5] == 200).all() and crop.crop(frame).shape == (30, 30, 3)
