"""Writing a file so that a reader never sees half of it and a link is never written through.

The one atomic writer of the project (outputs, manifests, checkpoints, downloads).
`atomic_path(path)` hands out a temporary file in `path`'s own folder (same file system, so
the rename is atomic), named `.{name}.XXXXXXXX{mark}`: hidden, and by default ending in
`.tmp` and `path`'s suffix (writers that pick their format by extension, as OpenCV's and
numpy's, still work). When the block ends without an error the file is renamed over `path`
(after an fsync with `durable=True`: checkpoints and downloads). A symbolic link at `path`
is replaced by the new file: its target is never opened. A failed block removes the
temporary file and leaves `path` as it was; a killed process may leave the temporary file,
which `remove_temporaries(path, mark)` deletes. `atomic_stream` is the same with the
temporary file open for binary writing.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TEMPORARY_MARK = ".tmp"  # `.{name}.XXXXXXXX.tmp{suffix}`: a killed writer leaves such a hidden file
RANDOM_PART = r"[a-z0-9_]{8}"  # the 8 random characters tempfile.mkstemp puts in a name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mark(path: Path, mark: str | None) -> str:
    """What ends the temporary file's name: `mark`, or `.tmp` followed by `path`'s suffix."""
    return f"{TEMPORARY_MARK}{path.suffix}" if mark is None else mark


def _fsync(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@contextmanager
def atomic_path(path: str | os.PathLike, *, mark: str | None = None, durable: bool = False) -> Iterator[Path]:
    """A temporary path to write instead of `path`, renamed over `path` when the block succeeds
    (see module doc). `mark`: the end of the temporary name; `durable`: fsync before the rename."""
    path = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_mark(path, mark), dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600); give what open() would
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_stream(path: str | os.PathLike, *, mark: str | None = None, durable: bool = False) -> Iterator[BinaryIO]:
    """`atomic_path` with the temporary file open for binary writing (closed before the rename)."""
    with atomic_path(path, mark=mark, durable=durable) as tmp:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as stream:
            yield stream


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, durable: bool = False) -> None:
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str, *, durable: bool = False) -> None:
    """`text` as UTF-8 at `path`, through a temporary file (JSON, CSV)."""
    write_bytes_atomic(path, text.encode("utf-8"), durable=durable)


def temporary_pattern(path: str | os.PathLike, mark: str | None = None) -> re.Pattern:
    """Names of the temporary files `atomic_path(path, mark=mark)` creates."""
    path = Path(path)
    return re.compile(rf"^\.{re.escape(path.name)}\.{RANDOM_PART}{re.escape(_mark(path, mark))}$")


def remove_temporaries(path: str | os.PathLike, mark: str | None = None) -> list[Path]:
    """Delete the temporary files that killed `atomic_path(path, mark=mark)` writers left next
    to `path` (never a link); returns the files removed. Call it when no write of `path` runs."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = temporary_pattern(path, mark)
    removed = []
    for candidate in sorted(path.parent.iterdir()):
        if pattern.match(candidate.name) and candidate.is_file() and not candidate.is_symlink():
            candidate.unlink()
            removed.append(candidate)
    return removed
