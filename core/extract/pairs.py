"""Pair lists (`--pairs FILE.csv`): just the listed pairs, e.g. each clip's onset and apex frames.

The CSV has a header and one of two column sets (any order):
- `name,image1,image2`: two image files;
- `name,video,frame1,frame2`: two frames of a video, 0-based indices.
Relative paths are relative to the CSV's folder. Each row is one sequence of one pair, whose
files are named by `name` (a face crop is planned per row); with strain, the rows share one
table, `<list>_strain.csv`. The whole list is checked before any work starts: a duplicate name,
a missing file, an index past the end or an unknown column is an error naming the row.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

from core.cli import check_none_is_an_input
from core.errors import UserError
from core.extract.outputs import plan_outputs, write_strain_table
from core.extract.sequence import ExtractOptions, SequenceResult, SequenceStopped, extract_sequence
from core.inference import Estimator
from core.strain import PairMeasures
from core.utils.frames import PairRow, video_frame_count

IMAGE_COLUMNS = ("name", "image1", "image2")
VIDEO_COLUMNS = ("name", "video", "frame1", "frame2")
COLUMN_SETS = "name,image1,image2 or name,video,frame1,frame2"


def _header(path: Path, header: list[str]) -> tuple[str, ...]:
    columns = [column.strip() for column in header]
    for column in columns:
        if column not in IMAGE_COLUMNS + VIDEO_COLUMNS:
            raise UserError(f"{path} line 1: unknown column {column!r} (columns: {COLUMN_SETS})")
    for expected in (IMAGE_COLUMNS, VIDEO_COLUMNS):
        if sorted(columns) == sorted(expected):
            return tuple(columns)
    raise UserError(f"{path} line 1: columns {','.join(columns)} are neither {COLUMN_SETS}")


def _name(where: str, name: str, seen: dict[str, int], line: int) -> str:
    if not name or name in (".", "..") or any(c in name for c in '/\\:*?"<>|') or name != name.strip():
        raise UserError(f"{where}: name {name!r} cannot name files (empty, a path or a character like / : *)")
    if name.casefold() in seen:
        raise UserError(f"{where}: duplicate name {name!r} (also line {seen[name.casefold()]})")
    seen[name.casefold()] = line
    return name


def _file(where: str, folder: Path, column: str, value: str) -> Path:
    path = Path(value) if Path(value).is_absolute() else folder / value
    if not path.is_file():
        raise UserError(f"{where}: {column} {value} not found" + (f" (in {folder})" if path != Path(value) else ""))
    return path


def _index(where: str, column: str, value: str, video: Path, count: int) -> int:
    try:
        index = int(value)
    except ValueError:
        raise UserError(f"{where}: {column} {value!r} is not a frame index (0-based integer)") from None
    if index < 0:
        raise UserError(f"{where}: {column} {index} is negative (indices are 0-based)")
    if count and index >= count:
        raise UserError(f"{where}: {column} {index} is past the end of {video.name} ({count} frames, 0-based)")
    return index


def read_pairs(path: Path) -> list[PairRow]:
    """The rows of a pair list, every row checked (files exist, indices within the video, names
    unique) before any work; UserError naming the file and line otherwise."""
    if not path.is_file():
        raise UserError(f"--pairs {path} not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            lines = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"--pairs {path}: cannot read it as CSV ({error})") from None
    if not lines:
        raise UserError(f"--pairs {path} is empty (columns: {COLUMN_SETS})")
    columns = _header(path, lines[0])
    folder, seen, counts, rows = path.parent, {}, {}, []
    for line, values in enumerate(lines[1:], start=2):
        if not any(value.strip() for value in values):
            continue  # blank line
        where = f"{path} line {line}"
        if len(values) != len(columns):
            raise UserError(f"{where}: {len(values)} values for the {len(columns)} columns {','.join(columns)}")
        row = {column: value.strip() for column, value in zip(columns, values)}
        name = _name(where, row["name"], seen, line)
        if "video" in row:
            video = _file(where, folder, "video", row["video"])
            if video not in counts:
                try:
                    counts[video] = video_frame_count(video)
                except UserError as error:
                    raise UserError(f"{where}: {error}") from None
            indices = tuple(_index(where, c, row[c], video, counts[video]) for c in ("frame1", "frame2"))
            rows.append(PairRow(name, where, video=video, indices=indices))
        else:
            images = [_file(where, folder, c, row[c]) for c in ("image1", "image2")]
            rows.append(PairRow(name, where, images=images))
    if not rows:
        raise UserError(f"--pairs {path} lists no pair")
    return rows


def table_path(pairs: Path, options: ExtractOptions) -> Path | None:
    """The pair list's strain table in `--output` (None: no strain)."""
    return options.output / f"{pairs.stem}_strain.csv" if options.save_strain else None


def _check_table(table: Path, rows: list[PairRow], overwrite: bool) -> None:
    """A table in the way is replaced when a run on the same list wrote it (its names are the rows'),
    any other file only with `overwrite`."""
    if not os.path.lexists(table) or overwrite:
        return
    try:
        with open(table, newline="", encoding="utf-8") as handle:
            lines = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        lines = []
    if not (lines and PairMeasures.is_header(lines[0]) and [v[0] for v in lines[1:]] == [r.name for r in rows]):
        raise UserError(f"{table.name} in {table.parent}: not from a run on this pair list (--overwrite replaces)")


def extract_pairs(
    rows: list[PairRow],
    estimator: Estimator,
    options: ExtractOptions,
    *,
    table: Path | None,
    inputs: list[tuple[str, Path | str]],
    log: Callable[[str], None] = print,
) -> list[SequenceResult]:
    """Every row as its own sequence, the files of all rows checked before the first flow; with
    `table` (strain), one row per pair in it."""
    for row in rows:
        plan_outputs(row, options.output, options.kinds(table=False), overwrite=options.overwrite, inputs=inputs)
    if table is not None:
        check_none_is_an_input([table], "--output", inputs)
        _check_table(table, rows, options.overwrite)
    results: list[SequenceResult] = []
    for row in rows:
        try:
            results.append(
                extract_sequence(row, estimator, options, inputs=inputs, log=log, progress=False, strain_table=False)
            )
        except UserError as error:  # the rows before it are written
            written = [name for result in results for name in result.names]
            written += error.written if isinstance(error, SequenceStopped) else []
            raise SequenceStopped(error, output=options.output, written=written) from error
    if table is not None:
        measures = [measure for result in results for measure in result.measures]
        write_strain_table(table, measures, cropped=options.face is not None)
    return results
