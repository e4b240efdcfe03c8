"""Micro-expression corpora as lists of clips: the canonical CSV and the readers of the layouts users have.

`read_dataset("NAME=PATH")` reads one `--dataset` value: NAME a reader of `READERS` and PATH its
copy, or any NAME with PATH a canonical CSV. Every clip is checked (`check_clips`: frames there,
onset and apex frames there, apex in [onset, offset], keys unique) before any work; a problem is
a `UserError` naming the file, the row and the clip. Nothing is dropped: a row that a rule cannot
read is an error, and each rule applied is said in the copy's `notes`.

The readers (frame numbers as in `core.mer.clips`: the number ending a frame file's name):
- `casme2`: `CASME2-coding-*.xlsx` in PATH (or its parent, so PATH may name a frame folder) with
  Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame, Estimated Emotion; frames
  `sub{NN}/{Filename}/img{N}.jpg` (`reg_img{N}.jpg` in the cropped set). The frame folder is PATH
  itself when it holds `sub{NN}` folders, else the subfolder of PATH that does (or, where none does,
  the subfolder's subfolder: archives unpack as `Cropped/Cropped`); of several, the one named like
  `Cropped` (the set CASME II ships of face crops, so no face detection runs). SAMM's alike.
- `samm`: `SAMM_Micro_FACS_Codes_v2.xlsx` (its header row found among the first rows: row 14) with
  Subject, Filename, Onset Frame, Apex Frame, Offset Frame, Estimated Emotion; frames
  `{subject}/{Filename}/{subject}_{frame:05d}.jpg` (4 digits in some clips). SAMM ships no crops.
- `smic`: SMIC-HS, `HS/s{N}/micro/{label}/{clip}/` frames (PATH is `HS`, holds it, or holds folders
  that do, e.g. SMIC_all_cropped and SMIC_all_raw: the cropped one is taken). No apex is annotated:
  onset = the first frame, apex = the middle one, the convention of the MEGC 2019 baselines.
  `reg_*` frames are SMIC's face crops.
- CAS(ME)^3 part A has no reader: its annotation files and frame folders come in several versions
  whose layout cannot be checked here; write it as a canonical CSV (`write_canonical`).

Annotation rules (each one said in `notes`, naming the rows): an apex written `/` or -1 (unknown:
CASME II writes `/`, SAMM's sheets -1) is the middle frame of [onset, offset]; an offset of 0, `/`
or -1 is unknown (apex is then only checked to be >= onset); a subject written as a number is
zero-padded as the folders name it (`sub01`, `006`); labels and file names lose surrounding spaces.
An empty row is not a clip; any other row a rule cannot read is an error naming it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from zipfile import BadZipFile

import numpy as np
import openpyxl
from openpyxl.utils.exceptions import InvalidFileException

from core.errors import UserError
from core.mer.clips import CANONICAL_COLUMNS, Clip
from core.mer.tables import csv_rows
from core.utils.atomic import write_text_atomic
from core.utils.flow_io import read_image
from core.utils.frames import IMAGE_EXTENSIONS, decode_frames, video_frame_count

OPTIONAL_COLUMNS = ("offset", "cropped")  # canonical CSV columns that may be left out
TRUE_WORDS = ("1", "true", "yes")
FALSE_WORDS = ("0", "false", "no", "")
TRAILING_NUMBER = re.compile(r"(\d+)$")
UNKNOWN_FRAMES = ("/", "-1")  # how CASME II ("/") and SAMM's sheets (-1) write an apex or offset nobody annotated
UNKNOWN_OFFSET = 0  # CASME II writes 0 for an offset nobody annotated
CROPPED_PREFIX = "reg_"  # CASME II's and SMIC's face-crop frames: reg_img46.jpg, reg_image106720.bmp
HEADER_SEARCH_ROWS = 30  # SAMM's header is on sheet row 14; CASME II's on row 1
CASME2_COLUMNS = ("Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Estimated Emotion")
SAMM_COLUMNS = ("Subject", "Filename", "Onset Frame", "Apex Frame", "Offset Frame", "Estimated Emotion")
SMIC_MICRO = "micro"  # SMIC-HS's micro-expression clips; its non_micro folders are other material


class ClipError(UserError):
    """One clip's frames cannot be read: the caller fails that clip alone."""


@dataclass(frozen=True)
class DatasetCopy:
    """A user's copy of one dataset: its clips (checked), whether frames are face crops, the rules applied."""

    name: str
    root: Path
    clips: list[Clip]
    cropped: bool  # frames are already face crops: the whole frame is the crop, no face detection runs
    notes: list[str]  # the choices made for the user, one line each


# ---------------------------------------------------------------- frames
def frame_number(path: Path) -> int | None:
    """The number ending a frame file's name (`img46.jpg` 46, `006_05562.jpg` 5562), None when none."""
    found = TRAILING_NUMBER.search(path.stem)
    return int(found.group(1)) if found else None


def numbered_frames(folder: Path) -> dict[int, list[Path]]:
    """The image files of `folder` by their number (several where two files share one)."""
    found: dict[int, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        number = frame_number(path)
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and number is not None:
            found.setdefault(number, []).append(path)
    return found


def _describe(clip: Clip) -> str:
    return f"clip {'/'.join(clip.key)}"


def _pick_frame(clip: Clip, number: int, found: dict[int, list[Path]]) -> Path:
    paths = found.get(number, [])
    if not paths:
        raise ClipError(f"{_describe(clip)}: no frame numbered {number} in {clip.frames}")
    if len(paths) > 1:
        raise ClipError(f"{_describe(clip)}: frames {paths[0].name} and {paths[1].name} share number {number}")
    return paths[0]


def frame_file(clip: Clip, number: int) -> Path:
    """The file of frame `number` of a folder clip; ClipError naming the clip when it is missing or ambiguous."""
    if not clip.frames.is_dir():
        raise ClipError(f"{_describe(clip)}: frames folder {clip.frames} not found")
    return _pick_frame(clip, number, numbered_frames(clip.frames))


def _read_frame(clip: Clip, path: Path) -> np.ndarray:
    try:
        return read_image(path)
    except (ValueError, OSError) as error:
        raise ClipError(f"{_describe(clip)}: cannot read {path} ({str(error).splitlines()[0]})") from None


def read_onset_apex(clip: Clip) -> tuple[np.ndarray, np.ndarray]:
    """The onset and apex frames, RGB uint8 [H, W, 3]; ClipError naming the clip and the file otherwise."""
    if clip.frames.is_dir():
        found = numbered_frames(clip.frames)
        paths = [_pick_frame(clip, number, found) for number in (clip.onset, clip.apex)]
        return _read_frame(clip, paths[0]), _read_frame(clip, paths[1])
    if not clip.frames.is_file():
        raise ClipError(f"{_describe(clip)}: frames {clip.frames} not found")
    decoded = decode_frames(clip.frames, {clip.onset, clip.apex})
    for index in (clip.onset, clip.apex):
        if index not in decoded:
            raise ClipError(f"{_describe(clip)}: video {clip.frames} decodes no frame {index} (damaged?)")
    return decoded[clip.onset], decoded[clip.apex]


# ---------------------------------------------------------------- checks
def _frames_problem(clip: Clip) -> str | None:
    if clip.frames.is_dir():
        found = numbered_frames(clip.frames)
        missing = [f"{role} frame {n}" for role, n in (("onset", clip.onset), ("apex", clip.apex)) if n not in found]
        shared = [n for n in (clip.onset, clip.apex) if len(found.get(n, [])) > 1]
        if missing:
            return f"{' and '.join(missing)} not in {clip.frames}"
        return f"two frame files numbered {shared[0]} in {clip.frames}" if shared else None
    if not clip.frames.is_file():
        return f"frames {clip.frames} not found"
    try:
        count = video_frame_count(clip.frames)
    except ValueError as error:
        return str(error)
    if min(clip.onset, clip.apex) < 0 or (count and max(clip.onset, clip.apex) >= count):
        return f"onset {clip.onset} or apex {clip.apex} outside video {clip.frames} ({count} frames, 0-based)"
    return None


def clip_problem(clip: Clip) -> str | None:
    """What is wrong with one clip before any work (order of annotations, frames on disk), None when nothing."""
    if clip.apex < clip.onset:
        return f"apex {clip.apex} before onset {clip.onset}"
    if clip.offset is not None and clip.apex > clip.offset:
        return f"apex {clip.apex} after offset {clip.offset}"
    return _frames_problem(clip)


def check_clips(clips: Sequence[Clip], source: str, *, rows: Sequence[str] | None = None) -> None:
    """Every clip's problem found before any work; UserError naming the source, the row and the clip of the
    first (and how many more). `rows` names each clip's row in `source` (default: its place in `clips`)."""
    rows = list(rows) if rows is not None else [f"row {i + 1}" for i in range(len(clips))]
    problems: list[str] = []
    seen: dict[tuple[str, str, str], str] = {}
    for clip, row in zip(clips, rows):
        problem = clip_problem(clip)
        if clip.key in seen:
            problem = f"duplicate of {seen[clip.key]}"
        seen.setdefault(clip.key, row)
        if problem:
            problems.append(f"{source} {row}, {_describe(clip)}: {problem}")
    if problems:
        more = f" (and {len(problems) - 1} more rows with problems)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)


# ---------------------------------------------------------------- the canonical CSV
def _parse_flag(where: str, value: str) -> bool:
    word = value.strip().casefold()
    if word not in TRUE_WORDS + FALSE_WORDS:
        raise UserError(f"{where}: cropped {value!r} is not one of {', '.join(TRUE_WORDS + FALSE_WORDS[:-1])}")
    return word in TRUE_WORDS


def _parse_int(where: str, column: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{where}: {column} {value!r} is not a frame number (an integer)") from None


def _canonical_clip(path: Path, where: str, row: dict[str, str]) -> Clip:
    empty = [column for column in CANONICAL_COLUMNS if not row[column]]
    if empty:
        raise UserError(f"{where}: {empty[0]} is empty")
    frames = Path(row["frames"])
    offset = row.get("offset", "")
    return Clip(
        dataset=row["dataset"],
        subject=row["subject"],
        clip=row["clip"],
        frames=frames if frames.is_absolute() else path.parent / frames,
        onset=_parse_int(where, "onset", row["onset"]),
        apex=_parse_int(where, "apex", row["apex"]),
        label=row["label"],
        offset=_parse_int(where, "offset", offset) if offset else None,
    )


def _read_canonical_table(path: Path) -> tuple[list[Clip], list[str], list[bool | None]]:
    """The clips, each one's line, and its `cropped` value (None without the column)."""
    clips, wheres, cropped = [], [], []
    for number, row in csv_rows(path, "canonical CSV", CANONICAL_COLUMNS, optional=OPTIONAL_COLUMNS):
        where = f"{path} line {number}"
        clips.append(_canonical_clip(path, where, row))
        wheres.append(f"line {number}")
        cropped.append(_parse_flag(where, row["cropped"]) if "cropped" in row else None)
    return clips, wheres, cropped


def read_canonical(path: Path) -> list[Clip]:
    """The clips of a canonical CSV (relative `frames` are relative to its folder); UserError naming the line
    of a row it cannot read. Fields lose surrounding spaces. The clips are not checked: see `check_clips`."""
    return _read_canonical_table(path)[0]


def _frames_text(path: Path, frames: Path) -> str:
    try:
        return str(frames.relative_to(path.parent))
    except ValueError:
        return str(frames)


def write_canonical(path: Path, clips: Sequence[Clip], *, cropped: bool | None = None) -> None:
    """The clips as a canonical CSV, atomically (frames relative to its folder where they lie under it);
    an `offset` column where a clip has one, a `cropped` column where `cropped` is given."""
    with_offset = any(clip.offset is not None for clip in clips)
    header = list(CANONICAL_COLUMNS) + ["offset"] * with_offset + ["cropped"] * (cropped is not None)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    for clip in clips:
        row = [clip.dataset, clip.subject, clip.clip, _frames_text(path, clip.frames), clip.onset, clip.apex]
        row += [clip.label] + ["" if clip.offset is None else clip.offset] * with_offset
        writer.writerow(row + [str(cropped).lower()] * (cropped is not None))
    write_text_atomic(path, text.getvalue())


def _read_canonical_copy(name: str, path: Path) -> DatasetCopy:
    clips, wheres, flags = _read_canonical_table(path)
    for clip, where in zip(clips, wheres):
        if clip.dataset != name:
            raise UserError(f"{path} {where}: dataset {clip.dataset!r}, but --dataset names this file {name!r}")
    if not clips:
        raise UserError(f"{path} has no clips")
    values = set(flags)
    if len(values) > 1:
        raise UserError(f"{path} {wheres[flags.index(not flags[0])]}: cropped differs from line 2's; one per file")
    check_clips(clips, str(path), rows=wheres)
    cropped = bool(flags[0])
    how = "its cropped column" if flags[0] is not None else "no cropped column: full frames, faces are detected"
    return DatasetCopy(name, path, clips, cropped, [f"{name}: canonical CSV {path}, cropped={cropped} ({how})"])


# ---------------------------------------------------------------- annotation sheets
def _squash(text: object) -> str:
    return re.sub(r"\s+", "", str(text)).casefold()


def _find_annotation(path: Path, pattern: str) -> Path:
    for folder in (path, path.parent):
        found = sorted(p for p in folder.glob(pattern) if not p.name.startswith("~$"))
        if len(found) > 1:
            raise UserError(f"several annotation files {pattern} in {folder}: {found[0].name}, {found[1].name}")
        if found:
            return found[0]
    raise UserError(f"no annotation file {pattern} in {path} or its parent")


def read_sheet(path: Path, columns: Sequence[str]) -> list[tuple[int, dict[str, object]]]:
    """The rows under the first sheet's header row (the first of its first rows holding all `columns`,
    matched without case and spaces): (sheet row number, {column: cell}), empty rows left out."""
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, BadZipFile, KeyError, ValueError, OSError) as error:  # not a workbook
        raise UserError(f"cannot read {path} as an xlsx workbook ({type(error).__name__}: {error})") from None
    try:
        rows = list(book.worksheets[0].iter_rows(values_only=True))
    finally:
        book.close()
    wanted = [_squash(column) for column in columns]
    for start, header in enumerate(rows[:HEADER_SEARCH_ROWS]):
        names = [_squash(cell) if cell is not None else "" for cell in header]
        if all(name in names for name in wanted):
            places = [names.index(name) for name in wanted]
            body = enumerate(rows[start + 1 :], start=start + 2)
            return [
                (number, {column: row[i] if i < len(row) else None for column, i in zip(columns, places)})
                for number, row in body
                if any(cell is not None and str(cell).strip() for cell in row)
            ]
    raise UserError(f"{path}: no header row with {', '.join(columns)} in its first {HEADER_SEARCH_ROWS} rows")


def _cell_text(cell: object) -> str:
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    return "" if cell is None else str(cell)


def _cell_frame(where: str, column: str, cell: object, *, unknown_allowed: bool) -> int | None:
    text = _cell_text(cell).strip()
    if unknown_allowed and text in UNKNOWN_FRAMES:
        return None
    if not text.isdigit():
        raise UserError(f"{where}: {column} {text!r} is not a frame number")
    return int(text)


@dataclass(frozen=True)
class SheetLayout:
    """How one dataset's annotation sheet and frame folders are laid out."""

    name: str
    annotation: str  # glob of the annotation file
    columns: tuple[str, ...]  # subject, clip, onset, apex, offset, label, as the sheet spells them
    subject_folder: re.Pattern  # the names of the subject folders
    subject_name: Callable[[str], str]  # the subject folder's name from the sheet's subject


def _casme2_subject(text: str) -> str:
    return f"sub{int(text):02d}" if text.isdigit() else text


def _samm_subject(text: str) -> str:
    return f"{int(text):03d}" if text.isdigit() else text


CASME2 = SheetLayout("casme2", "CASME2-coding-*.xlsx", CASME2_COLUMNS, re.compile(r"sub\d+$"), _casme2_subject)
SAMM = SheetLayout("samm", "SAMM_Micro_FACS_Codes_v2.xlsx", SAMM_COLUMNS, re.compile(r"\d+$"), _samm_subject)


@dataclass
class SheetNotes:
    """The rows each annotation rule touched, to be said in the copy's notes."""

    apex_unknown: list[int]
    offset_unknown: list[int]
    spaces: list[int]

    def lines(self, name: str, sheet: Path) -> list[str]:
        rules = (
            (self.apex_unknown, "apex '/' or -1 (unknown): the middle frame of [onset, offset]"),
            (self.offset_unknown, "offset 0, '/' or -1 (unknown): apex only checked to be >= onset"),
            (self.spaces, "spaces around the label or file name: stripped"),
        )
        return [
            f"{name}: {sheet.name} rows {', '.join(map(str, rows[:10]))}{' ...' if len(rows) > 10 else ''}: {rule}"
            for rows, rule in rules
            if rows
        ]


def _sheet_clip(layout: SheetLayout, root: Path, where: str, number: int, cells: list, notes: SheetNotes) -> Clip:
    subject_cell, name_cell, onset_cell, apex_cell, offset_cell, label_cell = cells
    texts = [_cell_text(cell) for cell in (subject_cell, name_cell, label_cell)]
    if any(not text.strip() for text in texts):
        empty = [column for column, text in zip(layout.columns[:2] + layout.columns[5:], texts) if not text.strip()]
        raise UserError(f"{where}: {empty[0]} is empty")
    if texts[1] != texts[1].strip() or texts[2] != texts[2].strip():
        notes.spaces.append(number)
    subject = layout.subject_name(texts[0].strip())
    onset = _cell_frame(where, layout.columns[2], onset_cell, unknown_allowed=False)
    apex = _cell_frame(where, layout.columns[3], apex_cell, unknown_allowed=True)
    offset = _cell_frame(where, layout.columns[4], offset_cell, unknown_allowed=True)
    if offset == UNKNOWN_OFFSET or offset is None:
        offset = None
        notes.offset_unknown.append(number)
    if apex is None:
        if offset is None:
            raise UserError(f"{where}: apex and offset both unknown: no rule gives the apex")
        apex = (onset + offset) // 2
        notes.apex_unknown.append(number)
    clip = texts[1].strip()
    return Clip(layout.name, subject, clip, root / subject / clip, onset, apex, texts[2].strip(), offset)


def _subfolders(folder: Path) -> list[Path]:
    return [child for child in sorted(folder.iterdir()) if child.is_dir()]


def _frame_roots(path: Path, holds: Callable[[Path], bool]) -> list[Path]:
    """PATH when it holds the subject folders, else its subfolders that do, else its subfolders' subfolders
    that do (archives often unpack into a folder of their own name: `Cropped/Cropped/sub01`)."""
    if holds(path):
        return [path]
    children = _subfolders(path)
    found = [child for child in children if holds(child)]
    return found or [inner for child in children for inner in _subfolders(child) if holds(inner)]


def _choose_root(name: str, path: Path, roots: list[Path], what: str) -> Path:
    if not roots:
        raise UserError(f"{name}: no folder of {what} in {path} or its subfolders")
    cropped = [root for root in roots if "crop" in str(root.relative_to(path)).casefold()]
    if len(roots) > 1 and len(cropped) != 1:
        raise UserError(f"{name}: several folders of {what} in {path} ({roots[0].name}, {roots[1].name}): name one")
    return cropped[0] if len(roots) > 1 else roots[0]


def _holds_subjects(pattern: re.Pattern) -> Callable[[Path], bool]:
    def holds(folder: Path) -> bool:
        return any(child.is_dir() and pattern.match(child.name) for child in folder.iterdir())

    return holds


def _is_cropped(root: Path, clips: Sequence[Clip]) -> bool:
    """Face crops: the folder is named like `Cropped`, or the first clip's frames are `reg_*`."""
    if "crop" in root.name.casefold():
        return True
    frames = clips[0].frames if clips else root
    return frames.is_dir() and any(p.name.startswith(CROPPED_PREFIX) for p in frames.iterdir())


def read_sheet_copy(layout: SheetLayout, path: Path) -> DatasetCopy:
    """A CASME II or SAMM copy: its annotation sheet's clips, checked, on its frame folder."""
    if not path.is_dir():
        raise UserError(f"{layout.name}: folder {path} not found")
    sheet = _find_annotation(path, layout.annotation)
    roots = _frame_roots(path, _holds_subjects(layout.subject_folder))
    root = _choose_root(layout.name, path, roots, f"subject folders ({layout.subject_folder.pattern})")
    notes = SheetNotes([], [], [])
    clips, rows = [], []
    for number, cells in read_sheet(sheet, layout.columns):
        where = f"{sheet} row {number}"
        clips.append(_sheet_clip(layout, root, where, number, [cells[c] for c in layout.columns], notes))
        rows.append(f"row {number}")
    if not clips:
        raise UserError(f"{sheet} has no clips under its header")
    check_clips(clips, str(sheet), rows=rows)
    cropped = _is_cropped(root, clips)
    frames = f"{layout.name}: frames from {root} ({'face crops: no face detection' if cropped else 'full frames'})"
    return DatasetCopy(layout.name, path, clips, cropped, [frames] + notes.lines(layout.name, sheet))


def read_casme2(path: Path) -> DatasetCopy:
    return read_sheet_copy(CASME2, path)


def read_samm(path: Path) -> DatasetCopy:
    return read_sheet_copy(SAMM, path)


# ---------------------------------------------------------------- SMIC-HS
def _smic_roots(path: Path) -> list[Path]:
    if path.name.casefold() == "hs":
        return [path]
    places = [path] + _subfolders(path)
    return [place / "HS" for place in places if (place / "HS").is_dir()]


def _smic_clip(folder: Path, subject: str, label: str) -> Clip:
    found = numbered_frames(folder)
    numbers = sorted(found)
    if len(numbers) < 2:
        raise UserError(f"smic: clip folder {folder} has {len(numbers)} numbered frame(s); a clip needs 2")
    middle = numbers[(len(numbers) - 1) // 2]  # the lower middle for an even count
    return Clip("smic", subject, folder.name, folder, numbers[0], middle, label, numbers[-1])


def read_smic(path: Path) -> DatasetCopy:
    """A SMIC-HS copy: `HS/s{N}/micro/{label}/{clip}/`, onset the first frame, apex the middle one."""
    if not path.is_dir():
        raise UserError(f"smic: folder {path} not found")
    root = _choose_root("smic", path, _smic_roots(path), "HS")
    clips = []
    for subject in sorted(root.iterdir(), key=lambda p: (len(p.name), p.name)):
        micro = subject / SMIC_MICRO
        if not (subject.is_dir() and micro.is_dir()):
            continue
        for label in sorted(p for p in micro.iterdir() if p.is_dir()):
            clips += [_smic_clip(f, subject.name, label.name) for f in sorted(label.iterdir()) if f.is_dir()]
    if not clips:
        raise UserError(f"smic: no clip folders s{{N}}/{SMIC_MICRO}/{{label}}/{{clip}} under {root}")
    check_clips(clips, str(root), rows=[f"folder {clip.frames.relative_to(root)}" for clip in clips])
    kinds = {clip.frames: any(p.name.startswith(CROPPED_PREFIX) for p in clip.frames.iterdir()) for clip in clips}
    if len(set(kinds.values())) > 1:
        mixed = [folder for folder, crop in kinds.items() if crop != kinds[clips[0].frames]][0]
        raise UserError(f"smic: {mixed} and {clips[0].frames} differ: one has {CROPPED_PREFIX}* face crops")
    cropped = kinds[clips[0].frames]
    notes = [
        f"smic: frames from {root} ({'reg_* face crops: no face detection' if cropped else 'full frames'})",
        "smic: SMIC-HS annotates no apex: apex = the middle frame (lower middle for an even count), "
        "onset = the first frame, the convention of the MEGC 2019 baselines",
    ]
    return DatasetCopy("smic", path, clips, cropped, notes)


READERS: dict[str, Callable[[Path], DatasetCopy]] = {"casme2": read_casme2, "samm": read_samm, "smic": read_smic}


def read_dataset(spec: str) -> DatasetCopy:
    """A `--dataset NAME=PATH` value: NAME a reader of READERS and PATH its copy, or PATH a canonical CSV
    whose rows' dataset is NAME (`cropped` from its optional column, else False). Checked before any work."""
    name, separator, text = spec.partition("=")
    name = name.strip()
    if not separator or not name or not text.strip():
        raise UserError(f"--dataset {spec!r}: expected NAME=PATH (NAME one of {', '.join(READERS)} or a CSV's)")
    path = Path(text.strip()).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        return _read_canonical_copy(name, path)
    if name not in READERS:
        raise UserError(f"--dataset {spec}: {name!r} has no reader ({', '.join(READERS)}) and {path} is no CSV file")
    return READERS[name](path)
