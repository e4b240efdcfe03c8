"""Which clips a protocol keeps, in which classes, and how its leave-one-subject-out runs are grouped.

- Class mappings: `MEGC2019` (3 classes: negative is SAMM's Anger, Contempt, Disgust, Sadness and
  Fear plus CASME II's disgust and repression; positive is happiness; surprise is surprise; a label
  that already is a class word, as SMIC's and the synthetic corpus's, maps to itself in any dataset;
  CASME II's others, fear and sadness and SAMM's Other are left out by design), or the user's
  (`read_class_mapping`: a CSV `dataset,label,class`; dataset `*` is any dataset; an empty class
  leaves the label out by design). Labels match without case and surrounding spaces.
- `select`: the clips a mapping keeps, their class indices, and the left-out labels counted per
  (dataset, label), never silent. A label the mapping does not know is an error naming the clip;
  so are fewer than two subjects and a class without a clip. `clip_list` (`--clips FILE.csv`,
  rows dataset,subject,clip) freezes the clip list, so that a published split is reproduced exactly.
- Grouping (`groupings`): `megc2019` is one LOSO over every dataset's subjects (`composite`);
  `per-dataset` is one LOSO within each dataset, with the same class mapping.
- `count_table` sets the class counts per dataset beside the published MEGC 2019 table (CASME II
  145 = 88/32/25, SAMM 133 = 92/26/15, SMIC-HS 164 = 70/51/43; 442 clips of 68 subjects);
  `count_warnings` names the rows where the user's copy differs.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from core.mer.clips import Clip

CLASS_WORDS = ("negative", "positive", "surprise")  # the MEGC 2019 classes
ANY_DATASET = "*"
MEGC2019 = "megc2019"
PER_DATASET = "per-dataset"
PROTOCOLS = (MEGC2019, PER_DATASET)
COMPOSITE = "composite"  # the one group of runs of the megc2019 protocol
CLASS_FILE_COLUMNS = ("dataset", "label", "class")
CLIP_LIST_COLUMNS = ("dataset", "subject", "clip")
MIN_SUBJECTS = 2  # leave-one-subject-out needs a subject to train on


@dataclass(frozen=True)
class Published:
    """One row of the MEGC 2019 composite's published counts (MEGC 2019 summary; STSTNet's and
    HTNet's papers use the same clips)."""

    clips: int
    per_class: tuple[int, int, int]  # negative, positive, surprise
    subjects: int


PUBLISHED = {
    "casme2": Published(145, (88, 32, 25), 24),
    "samm": Published(133, (92, 26, 15), 28),
    "smic": Published(164, (70, 51, 43), 16),
}
PUBLISHED_ALL = Published(442, (250, 109, 83), 68)


@dataclass(frozen=True)
class ClassMapping:
    """Labels to classes. `table` maps (dataset or `*`, label casefolded) to a class, or to None: left out."""

    name: str  # "megc2019" or the mapping file
    classes: tuple[str, ...]
    table: dict[tuple[str, str], str | None]

    def known(self, clip: Clip) -> bool:
        label = clip.label.strip().casefold()
        return (clip.dataset, label) in self.table or (ANY_DATASET, label) in self.table

    def lookup(self, clip: Clip) -> str | None:
        """The clip's class, or None for a label left out by design (see `known` first)."""
        label = clip.label.strip().casefold()
        return self.table.get((clip.dataset, label), self.table.get((ANY_DATASET, label)))


def _megc2019_table() -> dict[tuple[str, str], str | None]:
    table: dict[tuple[str, str], str | None] = {(ANY_DATASET, word): word for word in CLASS_WORDS}
    groups = {
        "casme2": {"negative": ("disgust", "repression"), None: ("others", "other", "fear", "sadness")},
        "samm": {"negative": ("anger", "contempt", "disgust", "sadness", "fear"), None: ("other", "others")},
    }
    for dataset, classes in groups.items():
        table[(dataset, "happiness")] = "positive"
        table[(dataset, "surprise")] = "surprise"
        table.update({(dataset, label): word for word, labels in classes.items() for label in labels})
    return table


MEGC2019_MAPPING = ClassMapping(MEGC2019, CLASS_WORDS, _megc2019_table())


def _read_csv(path: Path, flag: str, columns: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """(line, row) of a CSV with at least `columns` (values stripped, empty lines left out)."""
    if not path.is_file():
        raise UserError(f"{flag} {path} not found")
    try:
        lines = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline="")))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{flag} {path}: cannot read it as CSV ({error})") from None
    header = [column.strip() for column in lines[0]] if lines else []
    missing = [column for column in columns if column not in header]
    if missing:
        raise UserError(f"{flag} {path} line 1: no column {missing[0]!r} (columns: {','.join(columns)})")
    rows = []
    for number, values in enumerate(lines[1:], start=2):
        if any(value.strip() for value in values):
            if len(values) != len(header):
                raise UserError(f"{flag} {path} line {number}: {len(values)} fields, the header has {len(header)}")
            rows.append((number, {column: value.strip() for column, value in zip(header, values)}))
    return rows


def read_class_mapping(path: Path) -> ClassMapping:
    """The user's mapping (`--classes FILE`): CSV dataset,label,class; classes in order of first appearance."""
    table: dict[tuple[str, str], str | None] = {}
    lines: dict[tuple[str, str], int] = {}
    classes: list[str] = []
    for number, row in _read_csv(path, "--classes", CLASS_FILE_COLUMNS):
        key = (row["dataset"], row["label"].casefold())
        if not row["dataset"] or not row["label"]:
            raise UserError(f"--classes {path} line {number}: dataset and label must not be empty")
        if key in table:
            again = f"{row['dataset']},{row['label']} again (line {lines[key]})"
            raise UserError(f"--classes {path} line {number}: {again}")
        table[key], lines[key] = row["class"] or None, number
        if row["class"] and row["class"] not in classes:
            classes.append(row["class"])
    if len(classes) < 2:
        raise UserError(f"--classes {path}: {len(classes)} class(es); a classifier needs at least 2")
    return ClassMapping(str(path), tuple(classes), table)


def class_mapping(classes_file: Path | None) -> ClassMapping:
    """`--classes FILE`'s mapping, or MEGC 2019's without one."""
    return MEGC2019_MAPPING if classes_file is None else read_class_mapping(classes_file)


@dataclass
class Selection:
    """The clips a protocol keeps, their classes, and what it left out."""

    clips: list[Clip]
    classes: tuple[str, ...]
    targets: list[int]  # per clip, its class's index in `classes`
    left_out: dict  # (dataset, label) -> clips left out by design, counted and reported
    mapping: str = MEGC2019  # the mapping's name: the published counts apply to megc2019's

    @property
    def groups(self) -> list[str]:
        return [clip.group for clip in self.clips]


def _frozen_list(clips: Sequence[Clip], path: Path) -> list[Clip]:
    """The clips a `--clips FILE.csv` names, in the file's order; an error naming the line of one not there."""
    by_key = {clip.key: clip for clip in clips}
    chosen: list[Clip] = []
    lines: dict[tuple[str, str, str], int] = {}
    for number, row in _read_csv(path, "--clips", CLIP_LIST_COLUMNS):
        key = (row["dataset"], row["subject"], row["clip"])
        if key in lines:
            raise UserError(f"--clips {path} line {number}: {'/'.join(key)} again (line {lines[key]})")
        if key not in by_key:
            raise UserError(f"--clips {path} line {number}: clip {'/'.join(key)} is not in the datasets read")
        lines[key] = number
        chosen.append(by_key[key])
    if not chosen:
        raise UserError(f"--clips {path} lists no clip")
    return chosen


def _check_selection(selection: Selection) -> None:
    subjects = set(selection.groups)
    if len(subjects) < MIN_SUBJECTS:
        raise UserError(f"{len(subjects)} subject(s) after the class mapping; leave-one-subject-out needs 2")
    counts = Counter(selection.targets)
    empty = [name for i, name in enumerate(selection.classes) if not counts[i]]
    if empty:
        raise UserError(f"class {empty[0]!r} has no clip after the class mapping {selection.mapping}")


def select(clips: Sequence[Clip], mapping: ClassMapping, *, clip_list: Path | None = None) -> Selection:
    """The clips `mapping` keeps (or `clip_list` freezes), their targets, the left-out labels counted."""
    chosen = _frozen_list(clips, clip_list) if clip_list is not None else list(clips)
    kept, targets, left_out = [], [], Counter()
    for clip in chosen:
        if not mapping.known(clip):
            raise UserError(
                f"clip {'/'.join(clip.key)} ({clip.frames}): label {clip.label!r} is unknown to the class mapping "
                f"{mapping.name} (give --classes FILE with a dataset,label,class row for it)"
            )
        name = mapping.lookup(clip)
        if name is None and clip_list is not None:
            raise UserError(f"--clips {clip_list}: clip {'/'.join(clip.key)}'s label {clip.label!r} is left out")
        if name is None:
            left_out[(clip.dataset, clip.label)] += 1
            continue
        kept.append(clip)
        targets.append(mapping.classes.index(name))
    selection = Selection(kept, mapping.classes, targets, dict(left_out), mapping.name)
    _check_selection(selection)
    return selection


def groupings(selection: Selection, protocol: str) -> list[tuple[str, list[int]]]:
    """The protocol's LOSO runs: (name, indices into selection.clips); megc2019 one run, per-dataset one each."""
    if protocol == MEGC2019:
        return [(COMPOSITE, list(range(len(selection.clips))))]
    if protocol != PER_DATASET:
        raise UserError(f"--protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    runs: dict[str, list[int]] = {}
    for i, clip in enumerate(selection.clips):
        runs.setdefault(clip.dataset, []).append(i)
    for name, indices in runs.items():
        if len({selection.clips[i].subject for i in indices}) < MIN_SUBJECTS:
            raise UserError(f"--protocol per-dataset: dataset {name} has fewer than 2 subjects for its LOSO")
    return list(runs.items())


def _counted(selection: Selection, dataset: str | None) -> Published:
    indices = [i for i, clip in enumerate(selection.clips) if dataset is None or clip.dataset == dataset]
    counts = Counter(selection.targets[i] for i in indices)
    subjects = {selection.clips[i].group for i in indices}
    return Published(len(indices), tuple(counts[k] for k in range(len(selection.classes))), len(subjects))


def _published(selection: Selection, dataset: str | None) -> Published | None:
    """The published row that applies: the megc2019 mapping, a dataset of the table (the total with all three)."""
    if selection.mapping != MEGC2019 or selection.classes != CLASS_WORDS:
        return None
    datasets = {clip.dataset for clip in selection.clips}
    return PUBLISHED_ALL if dataset is None and datasets == set(PUBLISHED) else PUBLISHED.get(dataset)


def _table_rows(selection: Selection) -> list[tuple[str, Published | None, Published]]:
    datasets = list(dict.fromkeys(clip.dataset for clip in selection.clips))
    names: list[str | None] = datasets + [None]
    return [(name or "all", _published(selection, name), _counted(selection, name)) for name in names]


def count_table(selection: Selection) -> str:
    """Clips, class counts and subjects per dataset and in all, each beside its published MEGC 2019 row."""
    width = max([len(name) for name in selection.classes] + [8])
    header = ["dataset".ljust(12), "clips".rjust(6)] + [name.rjust(width) for name in selection.classes]
    lines = ["".join(header) + "subjects".rjust(10)]

    def line(name: str, row: Published) -> str:
        cells = [name.ljust(12), str(row.clips).rjust(6)] + [str(n).rjust(width) for n in row.per_class]
        return "".join(cells) + str(row.subjects).rjust(10)

    for name, published, counted in _table_rows(selection):
        lines.append(line(name, counted))
        if published is not None:
            lines.append(line("  published", published))
    left = "; ".join(f"{dataset} {label!r} {n}" for (dataset, label), n in sorted(selection.left_out.items()))
    lines.append(f"left out (labels outside the classes): {left or 'none'}")
    return "\n".join(lines)


def count_warnings(selection: Selection) -> list[str]:
    """One line per table row whose counts differ from the published MEGC 2019 row, naming the differences."""
    warnings = []
    for name, published, counted in _table_rows(selection):
        if published is None or published == counted:
            continue
        pairs = [("clips", counted.clips, published.clips), ("subjects", counted.subjects, published.subjects)]
        pairs += list(zip(selection.classes, counted.per_class, published.per_class))
        differ = ", ".join(f"{what} {ours} vs {theirs}" for what, ours, theirs in pairs if ours != theirs)
        warnings.append(f"{name} differs from the published MEGC 2019 counts: {differ} (yours vs published)")
    return warnings
