"""python -m core.mer: every verb's --help, no abbreviations, one-line errors, score on hand-computed numbers."""

from __future__ import annotations

import json

import pytest

from tests.mer_helpers import install_stand_ins, write_corpus

install_stand_ins()

from core.mer.cli import main  # noqa: E402


@pytest.mark.parametrize("verb", ["extract", "evaluate", "score", "run"])
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as stop:
        main([verb, "--help"])
    assert stop.value.code == 0 and f"core.mer {verb}" in capsys.readouterr().out


def test_abbreviations_are_refused(tmp_path):
    with pytest.raises(SystemExit) as stop:
        main(["extract", "--dataset", "x=y.csv", "--flo", "gt"])
    assert stop.value.code == 2


def test_fewer_than_two_subjects_is_one_line(tmp_path):
    csv = write_corpus(tmp_path / "corpus", subjects=1, clips_per_subject=3)
    with pytest.raises(SystemExit, match="1 subject") as stop:
        main(["run", "--dataset", f"synthetic={csv}", "--flow", "gt", "--output", str(tmp_path / "out")])
    assert "\n" not in stop.value.code and not (tmp_path / "out/cache").exists()


def test_score_on_a_hand_computed_file(tmp_path, capsys):
    rows = [
        ("a", "s1", "c1", "x", "x"),
        ("a", "s1", "c2", "x", "y"),
        ("b", "s2", "c1", "y", "y"),
        ("b", "s2", "c2", "y", "y"),
    ]
    predictions = tmp_path / "p.csv"
    predictions.write_text("dataset,subject,clip,label,prediction\n" + "".join(",".join(r) + "\n" for r in rows))
    main(["score", str(predictions), "--json", str(tmp_path / "s.json")])
    # x: TP 1, FN 1, FP 0 -> F1 2/3, recall 1/2; y: TP 2, FP 1 -> F1 4/5, recall 1
    scores = json.loads((tmp_path / "s.json").read_text())["composite"]
    assert scores["uf1"] == pytest.approx((2 / 3 + 4 / 5) / 2) and scores["uar"] == pytest.approx(0.75)
    assert scores["n"] == 4 and "score: UF1 0.733" in capsys.readouterr().out
