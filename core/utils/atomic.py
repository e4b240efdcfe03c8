"""Writing a file so that a reader never sees half of it and a link is never written through.

`atomic_path(path)` hands out a temporary file in `path`'s own folder (same file system, so
the rename is atomic) with `path`'s suffix (writers that pick their format by extension, as
OpenCV's and numpy's, still work); when the block ends without an error it is renamed over
`path`. A symbolic link at `path` is replaced by the new file: its target is never opened.
A failed block removes the temporary file and leaves `path` as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMPORARY_MARK = ".tmp"  # `.{name}.XXXXXXXX.tmp{suffix}`: a killed writer leaves such a hidden file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write instead of `path`, renamed over `path` when the block succeeds."""
    path = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{TEMPORARY_MARK}{path.suffix}", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600); give what open() would
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """`text` as UTF-8 at `path`, through a temporary file (JSON, CSV)."""
    write_bytes_atomic(path, text.encode("utf-8"))
