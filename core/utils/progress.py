"""Progress bars that suit where they are written: tqdm's bar, redrawn in place, on a terminal;
whole lines, one every `LINE_INTERVAL_S`, when the stream is a file or a pipe (`> log.txt`),
where each `\\r` redraw would otherwise be kept."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm

# Seconds between two lines of a bar written to a file or a pipe (tqdm's mininterval and
# maxinterval there): a ten-minute run gives about 20 lines, plus the first and the last.
LINE_INTERVAL_S = 30.0


class LineStream:
    """The stream a bar writes to when its output is not a terminal: each redraw (`\\r`, the bar,
    blanks over a longer previous bar) becomes one line; what is only `\\r` or blank is dropped."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Iterable | None = None, *, file: TextIO | None = None, **options: Any) -> tqdm:
    """`tqdm(iterable, file=file, **options)` (file: sys.stderr when None) that redraws in place on
    a terminal (with the terminal's width) and prints whole lines elsewhere."""
    stream = sys.stderr if file is None else file
    if is_terminal(stream):
        return tqdm(iterable, file=stream, dynamic_ncols=True, **options)
    return tqdm(iterable, file=LineStream(stream), mininterval=LINE_INTERVAL_S, maxinterval=LINE_INTERVAL_S, **options)
