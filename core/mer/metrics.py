"""The scores of micro-expression recognition as the field defines them, on pooled predictions.

Predictions are pooled over all folds (one prediction per clip). Per class, one against the rest:
F1 = 2 TP / (2 TP + FP + FN) and recall = TP / (TP + FN). UF1 is the mean of the classes' F1,
UAR the mean of their recalls; accuracy is the share of right predictions. A class that never
occurs among the labels counts as F1 0 and recall 0 with a warning: it is never dropped from the
means (STSTNet's code skips it, which raises UF1). The confusion matrix has the labels as rows and
the predictions as columns, in the order of the classes. The same scores are given per dataset,
sliced from the pooled predictions.

A predictions file is a CSV `dataset,subject,clip,label,prediction` (class names; other columns are
ignored): a class outside the classes, or a clip twice, is refused with the line named.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.mer.tables import csv_rows
from core.utils.atomic import write_text_atomic

PREDICTION_COLUMNS = ("dataset", "subject", "clip", "label", "prediction")
COMPOSITE = "composite"  # the report's row over every dataset


@dataclass
class Scores:
    """The scores of one set of pooled predictions over K classes."""

    uf1: float  # mean of the classes' F1
    uar: float  # mean of the classes' recalls
    accuracy: float  # share of right predictions
    n: int  # clips scored
    confusion: np.ndarray  # [K, K] int64: rows the labels, columns the predictions
    f1: dict[str, float]  # class -> one-vs-rest F1
    recall: dict[str, float]  # class -> one-vs-rest recall
    warnings: list[str]  # one line per class that never occurs among the labels

    def summary(self) -> dict:
        """The JSON entry of one row of the report: uf1, uar, accuracy, n."""
        return {"uf1": self.uf1, "uar": self.uar, "accuracy": self.accuracy, "n": self.n}


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def score(labels: Sequence[str], predictions: Sequence[str], classes: Sequence[str]) -> Scores:
    """UF1, UAR, accuracy and the confusion matrix of pooled predictions (class names)."""
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    if not labels:
        raise UserError("no predictions to score")
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in list(labels) + list(predictions) if name not in index]
    if unknown:
        raise UserError(f"class {unknown[0]!r} is not one of the classes {', '.join(classes)}")
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, ([index[name] for name in labels], [index[name] for name in predictions]), 1)
    f1, recall, warnings = {}, {}, []
    for k, name in enumerate(classes):
        hits, support, predicted = int(confusion[k, k]), int(confusion[k].sum()), int(confusion[:, k].sum())
        f1[name] = _ratio(2 * hits, support + predicted)  # 2 TP / (2 TP + FP + FN)
        recall[name] = _ratio(hits, support)
        if not support:
            warnings.append(f"class {name!r} never occurs among the {len(labels)} labels: F1 0 and recall 0")
    return Scores(
        uf1=float(np.mean(list(f1.values()))),
        uar=float(np.mean(list(recall.values()))),
        accuracy=float(np.trace(confusion)) / len(labels),
        n=len(labels),
        confusion=confusion,
        f1=f1,
        recall=recall,
        warnings=warnings,
    )


@dataclass(frozen=True)
class Prediction:
    """One row of a predictions file: a clip, its class and the predicted class."""

    dataset: str
    subject: str
    clip: str
    label: str  # the clip's class
    prediction: str  # the predicted class

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.dataset, self.subject, self.clip)


def _prediction(where: str, row: dict[str, str]) -> Prediction:
    empty = [column for column in PREDICTION_COLUMNS if not row[column]]
    if empty:
        raise UserError(f"{where}: {empty[0]} is empty")
    return Prediction(*(row[column] for column in PREDICTION_COLUMNS))


def read_predictions(path: Path, *, classes: Sequence[str] | None = None) -> list[Prediction]:
    """The rows of a predictions file. Every label and prediction must be one of `classes` (default: the
    labels' classes); a clip twice is refused. UserError naming the file and line otherwise."""
    rows, wheres, seen = [], [], {}
    for number, fields in csv_rows(path, "predictions", PREDICTION_COLUMNS):
        row = _prediction(f"predictions {path} line {number}", fields)
        if row.key in seen:
            raise UserError(f"predictions {path} line {number}: clip {'/'.join(row.key)} again (line {seen[row.key]})")
        seen[row.key] = number
        rows.append(row)
        wheres.append(number)
    if not rows:
        raise UserError(f"predictions {path} has no rows")
    known = set(classes) if classes is not None else {row.label for row in rows}
    for row, number in zip(rows, wheres):
        for column in ("label", "prediction"):
            if getattr(row, column) not in known:
                raise UserError(
                    f"predictions {path} line {number}: {column} {getattr(row, column)!r} is not one of the "
                    f"classes {', '.join(sorted(known))}"
                )
    return rows


def write_predictions(path: Path, rows: Sequence[Prediction]) -> None:
    """The rows as a predictions CSV, atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(PREDICTION_COLUMNS)
    writer.writerows([row.dataset, row.subject, row.clip, row.label, row.prediction] for row in rows)
    write_text_atomic(path, text.getvalue())


@dataclass
class Report:
    """The scores of all predictions pooled and of each dataset's slice of them."""

    composite: Scores
    datasets: dict[str, Scores]  # in order of first appearance

    @property
    def warnings(self) -> list[str]:
        scopes = [(COMPOSITE, self.composite)] + list(self.datasets.items())
        return [f"{name}: {warning}" for name, scores in scopes for warning in scores.warnings]


def score_report(rows: Sequence[Prediction], classes: Sequence[str]) -> Report:
    """The scores of all rows pooled (`composite`) and of each dataset's rows."""
    datasets = list(dict.fromkeys(row.dataset for row in rows))

    def scores(part: Sequence[Prediction]) -> Scores:
        return score([row.label for row in part], [row.prediction for row in part], classes)

    return Report(scores(rows), {name: scores([row for row in rows if row.dataset == name]) for name in datasets})


def report_table(report: Report) -> str:
    """A `composite` row and one row per dataset: UF1, UAR, accuracy, n."""
    scopes = [(COMPOSITE, report.composite)] + list(report.datasets.items())
    width = max(len(name) for name, _ in scopes) + 2
    lines = ["".ljust(width) + "     UF1     UAR     acc       n"]
    for name, scores in scopes:
        lines.append(f"{name.ljust(width)}{scores.uf1:8.4f}{scores.uar:8.4f}{scores.accuracy:8.4f}{scores.n:8d}")
    return "\n".join(lines)


def report_json(report: Report) -> dict:
    """`{"composite": {"uf1", "uar", "accuracy", "n"}, "datasets": {NAME: {...}}}`."""
    return {
        "composite": report.composite.summary(),
        "datasets": {name: scores.summary() for name, scores in report.datasets.items()},
    }
