"""The MER package's small CSV files (canonical clip lists, class mappings, frozen clip lists, predictions)
read with one-line errors naming the file and the line."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from core.errors import UserError


def csv_lines(path: Path, what: str) -> list[list[str]]:
    """The lines of the CSV file `path` as lists of fields (a UTF-8 BOM dropped); UserError naming `what`
    (e.g. "--classes") and the file where it is missing or not CSV text."""
    if not path.is_file():
        raise UserError(f"{what} {path} not found")
    try:
        return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline="")))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{what} {path}: cannot read it as CSV ({error})") from None


def _check_header(
    path: Path, what: str, header: list[str], columns: Sequence[str], optional: Sequence[str] | None
) -> None:
    listed = ",".join(columns) + "".join(f"[,{column}]" for column in optional or ())
    missing = [column for column in columns if column not in header]
    if missing:
        raise UserError(f"{what} {path} line 1: no column {missing[0]!r} (columns: {listed})")
    if optional is None:
        return
    unknown = [column for column in header if column not in (*columns, *optional)]
    if unknown or len(set(header)) < len(header):
        problem = f"unknown column {unknown[0]!r}" if unknown else "a column repeated"
        raise UserError(f"{what} {path} line 1: {problem} (columns: {listed})")


def csv_rows(
    path: Path, what: str, columns: Sequence[str], *, optional: Sequence[str] | None = None
) -> list[tuple[int, dict[str, str]]]:
    """(line number, {column: value stripped}) of each non-empty line under the header, which must hold
    `columns`. With `optional`, the header holds no other column and none twice; without it, other columns
    are kept. A line with as many fields as the header, else UserError naming `what`, the file and the line."""
    lines = csv_lines(path, what)
    header = [column.strip() for column in lines[0]] if lines else []
    _check_header(path, what, header, columns, optional)
    rows = []
    for number, values in enumerate(lines[1:], start=2):
        if any(value.strip() for value in values):
            if len(values) != len(header):
                raise UserError(f"{what} {path} line {number}: {len(values)} fields, the header has {len(header)}")
            rows.append((number, {column: value.strip() for column, value in zip(header, values)}))
    return rows
