"""The synthetic micro-expression corpus (core.mer.synthetic): its files, its ground truth, and the
separation it promises, checked with a nearest-centroid classifier under leave-one-subject-out."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from core.errors import UserError
from core.mer.clips import CANONICAL_COLUMNS, Clip
from core.mer.inputs import classifier_input
from core.mer.synthetic import CLASSES, clip_counts, ground_truth_file, write_synthetic_corpus
from core.synthetic.check import erode, warp_error
from core.utils.flow_io import read_image

SUBJECTS, CLIPS = 6, 6


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def _clips(path: Path) -> list[Clip]:
    return [
        Clip(row["dataset"], row["subject"], row["clip"], path.parent / row["frames"], int(row["onset"]),
             int(row["apex"]), row["label"], int(row["offset"]))
        for row in _rows(path)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """36 clips of 6 subjects at the default (strong) head motion."""
    return write_synthetic_corpus(tmp_path_factory.mktemp("mer") / "corpus", subjects=SUBJECTS, clips_per_subject=CLIPS)


def _frame(clip: Clip, number: int) -> np.ndarray:
    return read_image(clip.frames / f"img{number}.png")


def test_written_layout_reads_back_as_canonical_rows(corpus: Path) -> None:
    with open(corpus, encoding="utf-8") as stream:
        assert stream.readline().strip() == ",".join([*CANONICAL_COLUMNS, "offset", "cropped"])
    rows = _rows(corpus)
    assert len(rows) == SUBJECTS * CLIPS and {row["cropped"] for row in rows} == {"true"}
    clips = _clips(corpus)
    assert len({clip.key for clip in clips}) == len(clips) and {clip.dataset for clip in clips} == {"synthetic"}
    assert len({clip.group for clip in clips}) == SUBJECTS
    for clip in clips:
        assert not Path(_rows(corpus)[0]["frames"]).is_absolute()
        assert clip.apex == clip.onset + 2 and clip.offset == clip.onset + 3
        names = sorted(path.name for path in clip.frames.iterdir())
        assert names == sorted(f"img{n}.png" for n in range(clip.onset, clip.offset + 1))
        assert _frame(clip, clip.apex).shape == (128, 128, 3)
        for kind in ("facial", "head", "expression"):
            flow = np.load(ground_truth_file(clip, kind))
            assert flow.shape == (128, 128, 2) and flow.dtype == np.float32
    for subject in {clip.subject for clip in clips}:  # each subject's classes are balanced
        labels = [clip.label for clip in clips if clip.subject == subject]
        assert sorted(labels) == sorted(CLASSES * (CLIPS // 3))


def test_ground_truth_warps_apex_onto_onset(corpus: Path) -> None:
    """Backward-warping the apex with the facial flow gives the onset frame on the head; with the head flow
    it misses the expression, with zero flow the head motion too; expression = facial - head."""
    for clip in _clips(corpus)[:12]:
        onset, apex = _frame(clip, clip.onset), _frame(clip, clip.apex)
        facial, head, expression = (np.load(ground_truth_file(clip, kind)) for kind in ("facial", "head", "expression"))
        np.testing.assert_allclose(expression, facial - head, atol=1e-6)
        head_pixels = erode(np.abs(head).max(axis=-1) > 0, 2)  # the background is static: its flow is 0
        moving = erode(np.linalg.norm(expression, axis=-1) > 0.3, 1)
        assert head_pixels.mean() > 0.3 and moving.sum() > 20
        error = warp_error(onset, apex, facial, head_pixels)
        assert error < 1.0 and error < 0.25 * warp_error(onset, apex, np.zeros_like(facial), head_pixels)
        assert warp_error(onset, apex, facial, moving) < 0.6 * warp_error(onset, apex, head, moving)


def test_expressions_are_micro_and_where_their_class_acts(corpus: Path) -> None:
    """Peak skin motion 0.5-2 px (up to 2.4 with the sides' imbalance), below the head's mean motion;
    brows lower (v > 0) for negative, rise (v < 0) for surprise, in the upper face; lip corners rise
    in the lower face for positive."""
    for clip in _clips(corpus):
        expression, head = np.load(ground_truth_file(clip, "expression")), np.load(ground_truth_file(clip, "head"))
        length = np.linalg.norm(expression, axis=-1)
        assert 0.35 < length.max() < 2.6
        head_length = np.linalg.norm(head, axis=-1)
        assert head_length[head_length > 0].mean() > length.max()
        active = length > 0.5 * length.max()
        rows = np.nonzero(active)[0]
        v = expression[..., 1][active].mean()
        if clip.label == "positive":
            assert rows.mean() > 70 and v < 0
        else:
            assert rows.mean() < 64 and (v > 0 if clip.label == "negative" else v < 0)


def _loso_nearest_centroid(inputs: np.ndarray, targets: np.ndarray, groups: np.ndarray) -> float:
    """Accuracy of a nearest-centroid classifier, each subject's clips held out from its centroids."""
    predictions = np.empty_like(targets)
    for group in np.unique(groups):
        test = groups == group
        centroids = np.stack([inputs[~test & (targets == k)].mean(axis=0) for k in range(len(CLASSES))])
        distances = ((inputs[test][:, None, :] - centroids[None]) ** 2).sum(axis=-1)
        predictions[test] = distances.argmin(axis=1)
    return float((predictions == targets).mean())


def test_expression_flow_separates_the_classes_and_facial_flow_does_not(corpus: Path) -> None:
    clips = _clips(corpus)
    targets = np.array([CLASSES.index(clip.label) for clip in clips])
    groups = np.array([clip.group for clip in clips])
    inputs = {
        kind: np.stack([classifier_input(np.load(ground_truth_file(clip, kind))).ravel() for clip in clips])
        for kind in ("facial", "expression")
    }
    expression = _loso_nearest_centroid(inputs["expression"], targets, groups)
    facial = _loso_nearest_centroid(inputs["facial"], targets, groups)
    zero = _loso_nearest_centroid(np.zeros_like(inputs["facial"]), targets, groups)
    shuffled = _loso_nearest_centroid(inputs["expression"], np.random.default_rng(0).permutation(targets), groups)
    assert expression >= 0.9
    assert zero == pytest.approx(1 / 3)  # one prediction for all; the classes are balanced
    assert facial <= expression - 0.4 and facial < 0.5
    assert shuffled < 0.6


def test_same_seed_same_corpus_other_seed_other_corpus(tmp_path: Path) -> None:
    paths = [write_synthetic_corpus(tmp_path / name, subjects=1, clips_per_subject=1, seed=s) for name, s in
             (("a", 3), ("b", 3), ("c", 4))]  # fmt: skip
    flows = [np.load(ground_truth_file(_clips(path)[0], "facial")) for path in paths]
    np.testing.assert_array_equal(flows[0], flows[1])
    assert not np.array_equal(flows[0], flows[2])
    assert _rows(paths[0]) == _rows(paths[1])


def test_clip_counts_spread_the_composite() -> None:
    counts = clip_counts(442, 68)
    assert sum(counts) == 442 and len(counts) == 68 and set(counts) == {6, 7} and counts[0] == 7


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        ({"subjects": 0, "clips_per_subject": 2}, "at least one subject"),
        ({"subjects": 2, "clips_per_subject": [3]}, "need 2 counts"),
        ({"subjects": 2, "clips_per_subject": 2, "size": 64}, "at least 96x96"),
        ({"subjects": 2, "clips_per_subject": 2, "head_motion": -1.0}, "head_motion"),
        ({"subjects": 2, "clips_per_subject": 2, "seed": -1}, "seed must be at least 0"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path: Path, arguments: dict, words: str) -> None:
    with pytest.raises(UserError) as error:
        write_synthetic_corpus(tmp_path / "corpus", **arguments)
    assert words in str(error.value)
    assert not (tmp_path / "corpus").exists()


def test_refuses_a_folder_that_holds_something(tmp_path: Path) -> None:
    (tmp_path / "results.csv").write_text("keep me\n")
    with pytest.raises(UserError, match="not an empty folder"):
        write_synthetic_corpus(tmp_path, subjects=1, clips_per_subject=1)
    assert (tmp_path / "results.csv").read_text() == "keep me\n"
    with pytest.raises(UserError, match="not one of facial, head, expression"):
        ground_truth_file(Clip("synthetic", "s01", "clip01", tmp_path, 1, 3, "positive"), "optical")
