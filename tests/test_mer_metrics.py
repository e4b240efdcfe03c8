"""MER scores against hand-computed confusion matrices; predictions files and their bad rows."""

from __future__ import annotations

import json

import pytest

from core.errors import UserError
from core.mer.metrics import (
    Prediction,
    read_predictions,
    report_json,
    report_table,
    score,
    score_report,
    write_predictions,
)

CLASSES = ("negative", "positive", "surprise")


def _pairs(confusion: list[list[int]]) -> tuple[list[str], list[str]]:
    """Labels and predictions whose confusion matrix (rows labels, columns predictions) is `confusion`."""
    labels, predictions = [], []
    for i, row in enumerate(confusion):
        for j, count in enumerate(row):
            labels += [CLASSES[i]] * count
            predictions += [CLASSES[j]] * count
    return labels, predictions


def test_score_matches_a_hand_computed_matrix():
    # rows: labels negative, positive, surprise; columns: predictions
    #   negative [3, 1, 0]  support 4
    #   positive [1, 1, 0]  support 2
    #   surprise [0, 1, 3]  support 4
    # predicted: negative 4, positive 3, surprise 3
    # F1 = 2TP / (support + predicted): negative 6/8, positive 2/5, surprise 6/7
    # recall = TP / support: negative 3/4, positive 1/2, surprise 3/4
    labels, predictions = _pairs([[3, 1, 0], [1, 1, 0], [0, 1, 3]])
    scores = score(labels, predictions, CLASSES)
    assert scores.confusion.tolist() == [[3, 1, 0], [1, 1, 0], [0, 1, 3]]
    assert scores.f1 == pytest.approx({"negative": 0.75, "positive": 0.4, "surprise": 6 / 7})
    assert scores.recall == pytest.approx({"negative": 0.75, "positive": 0.5, "surprise": 0.75})
    assert scores.uf1 == pytest.approx((0.75 + 0.4 + 6 / 7) / 3)  # 0.66905
    assert scores.uar == pytest.approx((0.75 + 0.5 + 0.75) / 3)  # 2/3
    assert scores.accuracy == pytest.approx(7 / 10)
    assert scores.n == 10 and scores.warnings == []


def test_a_class_that_never_occurs_counts_as_zero_with_a_warning():
    # labels: negative 3, positive 2, surprise none; predictions:
    #   negative [2, 0, 1]
    #   positive [0, 2, 0]
    #   surprise [0, 0, 0]
    # F1: negative 2*2/(3+2) = 0.8, positive 2*2/(2+2) = 1, surprise 0 (TP 0, FP 1)
    # recall: negative 2/3, positive 1, surprise 0 (no clip)
    # UF1 over all three classes = 1.8/3 = 0.6 (dropping surprise, as STSTNet's code does, would give 0.9)
    labels, predictions = _pairs([[2, 0, 1], [0, 2, 0], [0, 0, 0]])
    scores = score(labels, predictions, CLASSES)
    assert scores.f1 == pytest.approx({"negative": 0.8, "positive": 1.0, "surprise": 0.0})
    assert scores.uf1 == pytest.approx(0.6)
    assert scores.uar == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert scores.accuracy == pytest.approx(4 / 5)
    assert len(scores.warnings) == 1 and "'surprise' never occurs" in scores.warnings[0]


def test_a_class_neither_labelled_nor_predicted_still_counts():
    labels, predictions = _pairs([[2, 0, 0], [0, 2, 0], [0, 0, 0]])
    scores = score(labels, predictions, CLASSES)
    assert scores.uf1 == pytest.approx(2 / 3) and scores.uar == pytest.approx(2 / 3)
    assert scores.accuracy == 1.0 and scores.warnings


def test_score_refuses_an_unknown_class():
    with pytest.raises(UserError, match="'anger' is not one of"):
        score(["negative", "anger"], ["negative", "negative"], CLASSES)


def _rows() -> list[Prediction]:
    # casme2: labels n n p s, predictions n p p s -> confusion [[1,1,0],[0,1,0],[0,0,1]]
    # smic:   labels n s,     predictions s s     -> confusion [[0,0,1],[0,0,0],[0,0,1]]
    casme2 = [("n", "n"), ("n", "p"), ("p", "p"), ("s", "s")]
    smic = [("n", "s"), ("s", "s")]
    word = dict(zip("nps", CLASSES))
    rows = [Prediction("casme2", f"sub0{i}", f"EP0{i}", word[a], word[b]) for i, (a, b) in enumerate(casme2)]
    return rows + [Prediction("smic", f"s{i}", f"s{i}_x", word[a], word[b]) for i, (a, b) in enumerate(smic)]


def test_report_pools_and_slices_per_dataset(tmp_path):
    report = score_report(_rows(), CLASSES)
    # composite: [[1,1,1],[0,1,0],[0,0,2]]; F1: n 2/(3+1)=0.5, p 2/(1+2)=2/3, s 4/(2+3)=0.8; recall 1/3, 1, 1
    assert report.composite.confusion.tolist() == [[1, 1, 1], [0, 1, 0], [0, 0, 2]]
    assert report.composite.uf1 == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    assert report.composite.uar == pytest.approx((1 / 3 + 1 + 1) / 3)
    # casme2: F1 n 2/(2+1)=2/3, p 2/(1+2)=2/3, s 1; recall 1/2, 1, 1; accuracy 3/4
    casme2 = report.datasets["casme2"]
    assert casme2.uf1 == pytest.approx((2 / 3 + 2 / 3 + 1) / 3) and casme2.accuracy == pytest.approx(0.75)
    # smic: F1 n 0, p 0 (never occurs: warned), s 2/(1+2); recall 0, 0, 1; accuracy 1/2
    smic = report.datasets["smic"]
    assert smic.uf1 == pytest.approx(2 / 9) and smic.uar == pytest.approx(1 / 3) and smic.n == 2
    assert report.warnings == ["smic: class 'positive' never occurs among the 2 labels: F1 0 and recall 0"]
    table = report_table(report).splitlines()
    assert [line.split()[0] for line in table[1:]] == ["composite", "casme2", "smic"]
    assert table[1].split()[1:] == [f"{report.composite.uf1:.4f}", f"{report.composite.uar:.4f}", "0.6667", "6"]
    shape = json.loads(json.dumps(report_json(report)))
    assert set(shape) == {"composite", "datasets"} and set(shape["datasets"]) == {"casme2", "smic"}
    assert shape["datasets"]["smic"] == {
        "uf1": pytest.approx(2 / 9),
        "uar": pytest.approx(1 / 3),
        "accuracy": 0.5,
        "n": 2,
    }


def test_predictions_round_trip(tmp_path):
    path = tmp_path / "predictions.csv"
    write_predictions(path, _rows())
    assert path.read_text().splitlines()[0] == "dataset,subject,clip,label,prediction"
    assert read_predictions(path) == _rows()


def _write(path, lines):
    path.write_text("\n".join(["dataset,subject,clip,label,prediction"] + lines) + "\n")
    return path


def test_predictions_with_an_unknown_class_are_refused_naming_the_line(tmp_path):
    path = _write(tmp_path / "p.csv", ["casme2,sub01,EP01,negative,negative", "casme2,sub01,EP02,positive,happy"])
    with pytest.raises(UserError, match=r"p.csv line 3: prediction 'happy' is not one of the classes"):
        read_predictions(path)
    with pytest.raises(UserError, match=r"line 2: label 'negative' is not one of the classes positive, surprise"):
        read_predictions(path, classes=("positive", "surprise"))


def test_predictions_with_a_clip_twice_are_refused_naming_both_lines(tmp_path):
    lines = [
        "casme2,sub01,EP01,negative,negative",
        "smic,s1,a,positive,positive",
        "casme2,sub01,EP01,negative,positive",
    ]
    with pytest.raises(UserError, match=r"line 4: clip casme2/sub01/EP01 again \(line 2\)"):
        read_predictions(_write(tmp_path / "p.csv", lines))


def test_predictions_without_a_column_or_with_an_empty_field_are_refused(tmp_path):
    (tmp_path / "a.csv").write_text("dataset,subject,clip,label\ncasme2,sub01,EP01,negative\n")
    with pytest.raises(UserError, match="line 1: no column 'prediction'"):
        read_predictions(tmp_path / "a.csv")
    with pytest.raises(UserError, match="line 2: subject is empty"):
        read_predictions(_write(tmp_path / "b.csv", ["casme2,,EP01,negative,negative"]))
