"""python -m core.mer: every verb's --help, no abbreviations, one-line errors, score on hand-computed numbers,
--seeds' mean and standard deviation."""

from __future__ import annotations

import json

import pytest

from core.mer.cli import main
from core.mer.synthetic import write_synthetic_corpus


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
    csv = write_synthetic_corpus(tmp_path / "corpus", subjects=1, clips_per_subject=3, size=96)
    with pytest.raises(SystemExit, match="1 subject") as stop:
        main(["run", "--dataset", f"synthetic={csv}", "--flow", "gt", "--output", str(tmp_path / "out")])
    assert "\n" not in stop.value.code and not (tmp_path / "out/cache").exists()


def write_rows(path, rows):
    path.write_text("dataset,subject,clip,label,prediction\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


def test_score_on_a_hand_computed_file(tmp_path, capsys):
    rows = [
        ("a", "s1", "c1", "x", "x"),
        ("a", "s1", "c2", "x", "y"),
        ("b", "s2", "c1", "y", "y"),
        ("b", "s2", "c2", "y", "y"),
    ]
    classes = tmp_path / "classes.csv"
    classes.write_text("dataset,label,class\na,x,x\nb,y,y\n")
    main(
        [
            "score",
            str(write_rows(tmp_path / "p.csv", rows)),
            "--json",
            str(tmp_path / "s.json"),
            "--classes",
            str(classes),
        ]
    )
    # x: TP 1, FN 1, FP 0 -> F1 2/3, recall 1/2; y: TP 2, FP 1 -> F1 4/5, recall 1
    scores = json.loads((tmp_path / "s.json").read_text())["composite"]
    assert scores["uf1"] == pytest.approx((2 / 3 + 4 / 5) / 2) and scores["uar"] == pytest.approx(0.75)
    assert scores["n"] == 4 and "score: UF1 0.733" in capsys.readouterr().out


def test_score_counts_a_class_predicted_but_never_a_label_as_f1_zero_with_a_warning(tmp_path, capsys):
    rows = [
        ("casme2", "s1", "c1", "negative", "negative"),
        ("casme2", "s1", "c2", "negative", "surprise"),
        ("casme2", "s2", "c1", "positive", "positive"),
        ("casme2", "s2", "c2", "positive", "negative"),
    ]
    main(["score", str(write_rows(tmp_path / "p.csv", rows)), "--json", str(tmp_path / "s.json")])
    # MEGC 2019's classes: negative TP 1, FP 1, FN 1 -> F1 1/2, recall 1/2; positive TP 1, FN 1 -> F1 2/3,
    # recall 1/2; surprise: never a label, predicted once -> F1 0, recall 0 (counted, not dropped)
    scores = json.loads((tmp_path / "s.json").read_text())["composite"]
    assert scores["uf1"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3) and scores["uar"] == pytest.approx(1 / 3)
    assert "class 'surprise' never occurs among the 4 labels" in capsys.readouterr().err


def test_score_refuses_a_class_outside_the_protocol_naming_the_line(tmp_path):
    rows = [("casme2", "s1", "c1", "negative", "negative"), ("casme2", "s1", "c2", "happiness", "negative")]
    with pytest.raises(SystemExit, match="line 3: label 'happiness' is not one of the classes"):
        main(["score", str(write_rows(tmp_path / "p.csv", rows))])


def test_seeds_report_mean_and_standard_deviation_of_each_seed_s_scores(tmp_path, capsys):
    csv = write_synthetic_corpus(tmp_path / "corpus", subjects=2, clips_per_subject=3, size=96)
    out = tmp_path / "out"
    main(
        ["run", "--dataset", f"synthetic={csv}", "--flow", "gt", "--output", str(out), "--epochs", "3", "--seeds", "2"]
    )
    line = capsys.readouterr().out.splitlines()[-1]
    results = out / "gt-expression-28-megc2019"
    per_seed = []
    for seed in range(2):  # each seed's predictions scored on their own, by the score verb
        main(["score", str(results / f"predictions-seed{seed}.csv"), "--json", str(tmp_path / f"s{seed}.json")])
        per_seed.append(json.loads((tmp_path / f"s{seed}.json").read_text())["composite"])
    over = json.loads((results / "scores.json").read_text())["over_seeds"]
    assert over["seeds"] == 2 and per_seed[0]["uf1"] != per_seed[1]["uf1"]  # the seeds differ: a spread to check
    for name in ("uf1", "uar", "accuracy"):
        a, b = per_seed[0][name], per_seed[1][name]
        assert over["mean"][name] == pytest.approx((a + b) / 2)
        assert over["std"][name] == pytest.approx(abs(a - b) / 2**0.5)  # sample standard deviation of two values
    assert f"UF1 {over['mean']['uf1']:.3f} +- {over['std']['uf1']:.3f}" in line and "accuracy" in line
