"""Micro-expression recognition from licensed corpora to UF1/UAR: `python -m core.mer VERB`.

    python -m core.mer run --dataset casme2=/data/CASME2 --dataset samm=/data/SAMM \\
        --dataset smic=/data/SMIC --flow expression --output mer/
    python -m core.mer extract --dataset casme2=/data/CASME2 --flow dis --output mer/
    python -m core.mer evaluate --dataset casme2=/data/CASME2 --flow dis --output mer/ --seeds 5
    python -m core.mer score mer/expression-28-megc2019/predictions.csv --json scores.json

`extract` caches each selected clip's classifier input (`<output>/cache/<flow>-<size>/`, resumable:
see core/mer/extract.py); `evaluate` trains the classifier leave-one-subject-out on the cache under
the protocol and writes `<output>/<flow>-<size>-<protocol>/`: `predictions.csv`, `scores.json` and
`confusion.png`; `run` is extract then evaluate; `score` scores any predictions CSV
(dataset,subject,clip,label,prediction). docs/mer.md has the recipe, the protocol and the outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.cli import (  # noqa: E402
    AtLeastOne,
    DocstringHelpFormatter,
    HelpFormatter,
    UserError,
    add_device_argument,
    add_model_arguments,
    add_offline_argument,
    check_output,
    device_and_precision,
    estimator_spec,
    exit_on_error,
    resolve_checkpoint,
)
from core.defaults import DEMO_ITERS  # noqa: E402
from core.estimators import build_estimator  # noqa: E402
from core.face.crop import FACE_MARGIN, FACE_SIZE, FaceCropOptions  # noqa: E402
from core.face.detect import make_detector  # noqa: E402
from core.mer import corpora, inputs, loso, metrics, models, protocol  # noqa: E402
from core.mer.clips import Clip  # noqa: E402
from core.mer.extract import (  # noqa: E402
    CACHE_FOLDER,
    ExtractJob,
    FileFlow,
    FlowMethod,
    extract_clips,
    ground_truth_flow,
    load_input,
    network_flow,
    opencv_flow,
    parse_flow,
    user_flow,
)
from core.utils.atomic import atomic_path, write_text_atomic  # noqa: E402
from core.weights import offline_requested, sha256_of  # noqa: E402

PROG = "python -m core.mer"
DEFAULT_FLOW = "expression"
DEFAULT_OUTPUT = "mer"
PREDICTIONS_FILE = "predictions.csv"
SCORES_FILE = "scores.json"
CONFUSION_FILE = "confusion.png"
CONFUSION_DPI = 120
SEED_SCORES = ("uf1", "uar", "accuracy")  # the composite's scores summarised over seeds
LABELS = {"uf1": "UF1", "uar": "UAR", "accuracy": "accuracy"}


# ---------------------------------------------------------------- the parser
def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    """The corpora and the protocol (every verb but score)."""
    group = parser.add_argument_group("corpora and protocol")
    group.add_argument(
        "--dataset",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help=f"a corpus copy (repeatable): NAME one of {', '.join(corpora.READERS)} with PATH its folder, "
        "or any NAME with PATH a canonical CSV (dataset,subject,clip,frames,onset,apex,label)",
    )
    group.add_argument(
        "--protocol",
        choices=protocol.PROTOCOLS,
        default=protocol.MEGC2019,
        help="LOSO over all subjects (megc2019: the composite) or within each dataset (per-dataset)",
    )
    group.add_argument(
        "--classes",
        default=None,
        help="CSV dataset,label,class: your own label mapping (default: MEGC 2019's negative/positive/surprise)",
    )
    group.add_argument("--clips", default=None, help="CSV dataset,subject,clip: a frozen clip list (a published split)")
    group.add_argument(
        "--flow",
        default=DEFAULT_FLOW,
        help="onset->apex flow: DecFlow's facial, expression or head; dis or farneback (OpenCV); gt (= gt-expression), "
        "gt-facial, gt-head (a synthetic corpus's ground truth); files:DIR (DIR/<dataset>/<subject>/<clip>.npy|.flo)",
    )
    group.add_argument("--size", type=int, default=inputs.INPUT_SIZE, help="side of the classifier's input, px")
    group.add_argument("--output", default=DEFAULT_OUTPUT, help="folder of the cache and the results")


def add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    """The flow network's weights and options, and the face crop."""
    parser.add_argument(
        "--weights",
        default=None,
        help="DecFlow checkpoint file or registered name (default: as get_flow.py's --model)",
    )
    add_offline_argument(parser)
    parser.add_argument("--iters", action=AtLeastOne, default=DEMO_ITERS, help="DecFlow refinement iterations")
    crop = parser.add_argument_group("face crop (copies whose frames are no face crops)")
    crop.add_argument("--face_detector", default="haar", help="haar (OpenCV's cascade) or yunet:PATH")
    crop.add_argument("--face_margin", type=float, default=FACE_MARGIN, help="margin on each side, in face sides")
    crop.add_argument("--crop_size", type=int, default=FACE_SIZE, help="side of the crop the flow is computed on, px")
    parser.add_argument("--overwrite", action="store_true", help="redo every clip, and replace folders no run wrote")
    add_model_arguments(parser)  # adds --device


def add_train_arguments(parser: argparse.ArgumentParser, *, device: bool) -> None:
    """The classifier and its training (defaults: loso.TrainConfig's)."""
    defaults = loso.TrainConfig()
    group = parser.add_argument_group("classifier")
    group.add_argument("--model", choices=sorted(models.MODELS), default=defaults.model, help="classifier")
    group.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs per fold (fixed in advance)")
    group.add_argument("--seeds", type=int, default=1, help="repeat the whole protocol with seeds 0..N-1")
    if device:
        add_device_argument(group)


def add_verb(verbs: argparse._SubParsersAction, name: str, summary: str) -> argparse.ArgumentParser:
    """A verb's parser (a subcommand's parser does not inherit the parent's allow_abbrev)."""
    return verbs.add_parser(name, help=summary, formatter_class=HelpFormatter, allow_abbrev=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=DocstringHelpFormatter, allow_abbrev=False
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    extract = add_verb(verbs, "extract", "cache each clip's classifier input (resumable)")
    add_corpus_arguments(extract)
    add_extract_arguments(extract)
    evaluate = add_verb(verbs, "evaluate", "train LOSO on the cache; predictions, scores, confusion")
    add_corpus_arguments(evaluate)
    add_train_arguments(evaluate, device=True)
    run = add_verb(verbs, "run", "extract, then evaluate")
    add_corpus_arguments(run)
    add_extract_arguments(run)
    add_train_arguments(run, device=False)
    score = add_verb(verbs, "score", "score a predictions CSV")
    score.add_argument("predictions", help="CSV dataset,subject,clip,label,prediction (class names)")
    score.add_argument("--json", default=None, help="also write the scores as JSON here")
    score.add_argument(
        "--classes",
        default=None,
        help="CSV dataset,label,class: score over its classes (default: MEGC 2019's negative/positive/surprise); "
        "a class that never occurs among the labels scores F1 0, with a warning",
    )
    return parser


# ---------------------------------------------------------------- corpora and protocol
def say(line: str) -> None:
    print(line, flush=True)


def warn(line: str) -> None:
    print(f"{PROG}: warning: {line}", file=sys.stderr, flush=True)


def read_copies(specs: Sequence[str]) -> list[corpora.DatasetCopy]:
    """Every `--dataset` copy, its rows checked before any work; what is chosen for each is said."""
    copies = [corpora.read_dataset(spec) for spec in specs]
    names = [copy.name for copy in copies]
    if len(set(names)) != len(names):
        raise UserError(f"--dataset: {sorted(n for n in names if names.count(n) > 1)[0]} is given twice")
    for copy in copies:
        crop = "its frames are face crops: the whole frame" if copy.cropped else "face detection (one crop per clip)"
        say(f"{copy.name}: {len(copy.clips)} clips in {copy.root}; crop: {crop}")
        for note in copy.notes:
            say(note)
    return copies


def select(args: argparse.Namespace, copies: Sequence[corpora.DatasetCopy]) -> protocol.Selection:
    """The protocol's clips and classes; the counts next to MEGC 2019's table, the differences warned."""
    mapping = protocol.class_mapping(Path(args.classes) if args.classes else None)
    clips = [clip for copy in copies for clip in copy.clips]
    selection = protocol.select(clips, mapping, clip_list=Path(args.clips) if args.clips else None)
    say(protocol.count_table(selection))
    for line in protocol.count_warnings(selection):
        warn(line)
    return selection


def cache_folder(args: argparse.Namespace, method_name: str) -> Path:
    return Path(args.output) / CACHE_FOLDER / f"{method_name}-{args.size}"


def check_size(size: int) -> None:
    if size < 1:
        raise UserError(f"--size must be >= 1 px, got {size}")


# ---------------------------------------------------------------- extract
def flow_method(args: argparse.Namespace) -> FlowMethod:
    """The `--flow` method; DecFlow's weights are loaded here (after every input is checked)."""
    kind, detail = parse_flow(args.flow)
    if kind == "opencv":
        return opencv_flow(detail)
    if kind == "gt":
        return ground_truth_flow(detail)
    if kind == "files":
        return user_flow(Path(detail))
    checkpoint = resolve_checkpoint(args.weights, offline=offline_requested(args.offline))
    device, amp_dtype = device_and_precision(args)
    sha256 = sha256_of(checkpoint)
    spec = estimator_spec(args, checkpoint, device=device, amp_dtype=amp_dtype, pad_mode="symmetric", sha256=sha256)
    return network_flow(build_estimator(spec), detail, sha256)


def method_name(args: argparse.Namespace) -> str:
    """The cache's name of `--flow` (no weights loaded)."""
    kind, detail = parse_flow(args.flow)
    return {"gt": f"gt-{detail}", "files": f"files-{Path(detail).name}"}.get(kind, detail)


def face_options(args: argparse.Namespace) -> FaceCropOptions:
    try:
        detector = make_detector(args.face_detector)
        return FaceCropOptions(detector=detector, margin=args.face_margin, size=args.crop_size)
    except UserError as error:
        raise UserError(str(error).replace("--face_size", "--crop_size")) from None


def run_extract(args: argparse.Namespace) -> protocol.Selection:
    """Extract the clips of the protocol; returns its selection (for `run`)."""
    check_size(args.size)
    check_output(args.output, "--output", folder=True)
    parse_flow(args.flow)
    face = face_options(args)
    copies = read_copies(args.dataset)
    selection = select(args, copies)
    by_name = {copy.name: copy for copy in copies}
    work = [(clip, by_name[clip.dataset]) for clip in selection.clips]
    method = flow_method(args)
    if isinstance(method, FileFlow):
        for clip, _ in work:  # every missing flow file named before any work
            method.locate(clip)
    job = ExtractJob(
        method=method, size=args.size, face=face, cache=cache_folder(args, method_name(args)), overwrite=args.overwrite
    )
    summary = extract_clips(work, job)
    say(f"extract: {summary.line().replace('sequences', 'clips')}; cache {job.cache}")
    tally = summary.tally
    if tally.failed and tally.done + tally.skipped == 0:
        raise UserError(f"no clip could be extracted ({tally.failed} failed; reasons in {summary.failures_file})")
    if tally.failed:
        warn(
            f"{tally.failed} of {len(work)} clips failed (reasons in {summary.failures_file}); evaluate leaves them out"
        )
    return selection


# ---------------------------------------------------------------- evaluate
def load_inputs(args: argparse.Namespace, selection: protocol.Selection) -> tuple[np.ndarray, protocol.Selection]:
    """The cached inputs `[N, 3, S, S]` of the selection's clips, and the selection of the clips that
    have one (a clip without one, e.g. it failed to extract, is left out with a warning)."""
    cache = cache_folder(args, method_name(args))
    found = [load_input(cache, clip, args.size) for clip in selection.clips]
    kept = [k for k, features in enumerate(found) if features is not None]
    missing = [clip for clip, features in zip(selection.clips, found) if features is None]
    if not kept:
        raise UserError(f"no cached input in {cache}: run `{PROG} extract` with the same --dataset, --flow and --size")
    if missing:
        warn(
            f"{len(missing)} of {len(found)} clips have no cached input in {cache}, left out "
            f"(first: {'/'.join(missing[0].key)}; failures.jsonl there says why)"
        )
    kept_selection = replace(
        selection, clips=[selection.clips[k] for k in kept], targets=[selection.targets[k] for k in kept]
    )
    return np.stack([found[k] for k in kept]), kept_selection


def train_once(
    features: torch.Tensor, selection: protocol.Selection, args: argparse.Namespace, seed: int
) -> np.ndarray:
    """One whole protocol with `seed` (its LOSO runs: protocol.groupings): the pooled predictions `[N]`."""
    config = replace(loso.TrainConfig(), model=args.model, epochs=args.epochs, seed=seed)
    targets = torch.tensor(selection.targets, dtype=torch.long, device=features.device)
    predictions = np.zeros(len(selection.clips), dtype=np.int64)
    for _, positions in protocol.groupings(selection, args.protocol):
        index = torch.tensor(positions, device=features.device)
        groups = [selection.groups[k] for k in positions]
        result = loso.train_loso(
            features[index], targets[index], groups, num_classes=len(selection.classes), config=config, progress=True
        )
        predictions[positions] = result.predictions.cpu().numpy()
    return predictions


def prediction_rows(clips: Sequence[Clip], targets: Sequence[int], predicted: np.ndarray, classes: Sequence[str]):
    return [
        metrics.Prediction(clip.dataset, clip.subject, clip.clip, classes[t], classes[int(p)])
        for clip, t, p in zip(clips, targets, predicted)
    ]


def write_confusion(path: Path, confusion: np.ndarray, classes: Sequence[str], title: str) -> None:
    """The confusion matrix (rows: labels, columns: predictions) as a PNG, written atomically."""
    figure, axes = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    axes.imshow(confusion, cmap="Blues")
    axes.set(
        xticks=range(len(classes)),
        yticks=range(len(classes)),
        xticklabels=classes,
        yticklabels=classes,
        xlabel="prediction",
        ylabel="label",
        title=title,
    )
    for (row, col), count in np.ndenumerate(confusion):
        axes.text(col, row, str(count), ha="center", va="center")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=CONFUSION_DPI)
    plt.close(figure)


def results_folder(args: argparse.Namespace) -> Path:
    classes = f"-classes-{Path(args.classes).stem}" if args.classes else ""
    return Path(args.output) / f"{method_name(args)}-{args.size}-{args.protocol}{classes}"


def seed_summary(reports: Sequence[metrics.Report]) -> dict:
    """Mean and standard deviation over seeds of the composite's UF1, UAR and accuracy."""
    values = {name: [report_value(r, name) for r in reports] for name in SEED_SCORES}
    return {
        "seeds": len(reports),
        "mean": {name: float(np.mean(v)) for name, v in values.items()},
        "std": {name: float(np.std(v, ddof=1)) for name, v in values.items()},  # sample std (n - 1)
    }


def report_value(report: metrics.Report, name: str) -> float:
    return float(metrics.report_json(report)["composite"][name])


def run_evaluate(args: argparse.Namespace, selection: protocol.Selection | None = None) -> Path:
    """Train and score under the protocol; returns the results folder."""
    if args.seeds < 1 or args.epochs < 1:
        raise UserError(f"--seeds and --epochs must be >= 1, got {args.seeds} and {args.epochs}")
    check_size(args.size)
    folder = check_output(results_folder(args), "--output", folder=True)
    device, _ = device_and_precision(args, mixed=False)
    started = time.perf_counter()
    selection = selection or select(args, read_copies(args.dataset))
    features, kept = load_inputs(args, selection)
    inputs_t = torch.from_numpy(features).to(device)  # [N, 3, S, S]
    reports, rows_of_seeds = [], []
    for seed in range(args.seeds):
        predicted = train_once(inputs_t, kept, args, seed)
        rows_of_seeds.append(prediction_rows(kept.clips, kept.targets, predicted, kept.classes))
        reports.append(metrics.score_report(rows_of_seeds[-1], kept.classes))
    write_results(folder, args, kept, reports, rows_of_seeds, len(selection.clips) - len(kept.clips))
    for line in reports[0].warnings:
        warn(line)
    say(metrics.report_table(reports[0]))
    composite = metrics.report_json(reports[0])["composite"]
    spread = ""
    if args.seeds > 1:
        summary = seed_summary(reports)
        spread = ", ".join(f"{LABELS[n]} {summary['mean'][n]:.3f} +- {summary['std'][n]:.3f}" for n in SEED_SCORES)
        spread = f" (seed 0; over {args.seeds} seeds, mean +- standard deviation: {spread})"
    say(
        f"evaluate: UF1 {composite['uf1']:.3f}, UAR {composite['uar']:.3f}, accuracy {composite['accuracy']:.3f} "
        f"over {len(kept.clips)} clips of {len(set(kept.groups))} subjects{spread}, {args.protocol}, "
        f"{args.model} {args.epochs} epochs, in {time.perf_counter() - started:.1f} s; results in {folder}"
    )
    return folder


def write_results(
    folder: Path,
    args: argparse.Namespace,
    selection: protocol.Selection,
    reports: Sequence[metrics.Report],
    rows_of_seeds: Sequence[Sequence[metrics.Prediction]],
    missing: int,
) -> None:
    """predictions.csv (predictions-seed<k>.csv for several seeds), scores.json, confusion.png."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, rows in enumerate(rows_of_seeds):
        name = PREDICTIONS_FILE if len(rows_of_seeds) == 1 else f"predictions-seed{seed}.csv"
        metrics.write_predictions(folder / name, rows)
    scores = {
        **metrics.report_json(reports[0]),
        "run": {
            "flow": args.flow,
            "size": args.size,
            "protocol": args.protocol,
            "classes": list(selection.classes),
            "model": args.model,
            "epochs": args.epochs,
            "seeds": args.seeds,
            "missing_clips": missing,
            "left_out": {f"{d}/{label}": n for (d, label), n in sorted(selection.left_out.items())},
        },
    }
    if len(reports) > 1:
        scores["over_seeds"] = seed_summary(reports)
    write_text_atomic(folder / SCORES_FILE, json.dumps(scores, indent=1) + "\n")
    title = f"{args.flow}, {args.protocol}" + (", seed 0" if len(reports) > 1 else "")
    write_confusion(folder / CONFUSION_FILE, reports[0].composite.confusion, selection.classes, title)


# ---------------------------------------------------------------- score, run, main
def run_score(args: argparse.Namespace) -> None:
    path = Path(args.predictions)
    json_path = check_output(args.json, "--json") if args.json else None
    classes = protocol.class_mapping(Path(args.classes) if args.classes else None).classes
    rows = metrics.read_predictions(path, classes=classes)
    report = metrics.score_report(rows, classes)
    for line in report.warnings:
        warn(line)
    say(metrics.report_table(report))
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(metrics.report_json(report), indent=1) + "\n")
    composite = metrics.report_json(report)["composite"]
    written = f"; JSON in {json_path}" if json_path else ""
    say(f"score: UF1 {composite['uf1']:.3f}, UAR {composite['uar']:.3f} over {composite['n']} clips of {path}{written}")


def run_verb(args: argparse.Namespace) -> None:
    if args.verb == "score":
        run_score(args)
    elif args.verb == "extract":
        run_extract(args)
    elif args.verb == "evaluate":
        run_evaluate(args)
    else:
        run_evaluate(args, run_extract(args))


def main(argv: Sequence[str] | None = None) -> None:
    """Run a verb; bad input becomes a one-line SystemExit (see exit_on_error)."""
    args = build_parser().parse_args(argv)
    try:
        run_verb(args)
    except UserError as error:
        raise SystemExit(f"{PROG} {args.verb}: error: {str(error).splitlines()[0]}") from None


def entry_point() -> None:
    exit_on_error(main)
