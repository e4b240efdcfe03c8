"""Released weights by name: where each file comes from, how it is verified, where it goes.

    python -m core.weights list                          # names, files, status
    python -m core.weights fetch decflow-facialflownet   # download and verify into checkpoints/

A `WeightsEntry` names one file, its source URL and its checksum. The authors' two files
are pinned to one commit of their repository and checked against their git blob ids
(`sha1(b"blob <size>\\0" + content)`); the ImageNet ResNet-50 of the semantic encoder is
torchvision's `ResNet50_Weights.IMAGENET1K_V1`, checked as torch.hub does (the sha256
prefix in its file name) and stored where torchvision keeps it (torch.hub's cache).

A download is written to `.{file}.XXXXXXXX.part` beside its destination, checked (length,
not an HTML page, not a Git LFS pointer, checksum) and only then renamed to its final
name: a killed or failed download never leaves a file that could be taken for weights.
`DECFLOW_WEIGHTS_URL` replaces the base URL of the authors' files (mirrors, tests; the
path under it stays `checkpoints/<file>`); `DECFLOW_OFFLINE=1`, like the scripts'
`--offline`, turns every download off.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.models import ResNet50_Weights

from core.defaults import CHECKPOINTS_DIR, USAGE_ERROR_STATUS
from core.errors import UserError
from core.utils.atomic import atomic_path, remove_temporaries
from core.utils.progress import progress_bar

AUTHORS_COMMIT = "b5f2442f7e0419d1c0941796b22a1815cdb4052e"
AUTHORS_BASE_URL = f"https://raw.githubusercontent.com/RIA1159/FacialFlowNet/{AUTHORS_COMMIT}"
BASE_URL_VARIABLE = "DECFLOW_WEIGHTS_URL"
OFFLINE_VARIABLE = "DECFLOW_OFFLINE"
FETCH_COMMAND = "python -m core.weights fetch"
CHUNK = 1 << 20  # bytes per read while downloading and hashing
TIMEOUT_S = 60  # seconds without data before a download gives up
LFS_POINTER = b"version https://git-lfs.github.com/spec/"
HEAD_BYTES = 256  # first bytes looked at to recognise an HTML page or a Git LFS pointer
HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<?xml")
PARTIAL_SUFFIX = ".part"


class WeightsUnavailable(RuntimeError):
    """Weights that could not be had. `reason`: what went wrong, one line; `remedy`: the lines
    below it, the command to run by hand and the URL and destination of a manual download.
    The message is `{name}: {reason}`, then the remedy."""

    def __init__(self, entry: WeightsEntry, reason: str, *, url: str, destination: Path) -> None:
        self.reason = reason
        self.destination = destination
        self.command = fetch_command(entry, destination)
        self.remedy = f"  run where there is internet: {self.command}\n  (or download {url} to {destination})"
        super().__init__(f"{entry.name}: {reason}\n{self.remedy}")

    def line(self) -> str:
        """The failure on one line: the file, what went wrong, the command that fetches it."""
        where = "" if str(self.destination) in self.reason else f"{self.destination}: "
        return f"{where}{self.reason}; run where there is internet: {self.command}"


# ---------------------------------------------------------------- checksums
def hash_file(digest, path: str | os.PathLike) -> str:
    """`digest` (a hashlib object) updated with the bytes of the file at `path`, read in
    chunks; its hex digest."""
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex)."""
    return hash_file(hashlib.sha256(), path)


@dataclass(frozen=True)
class Checksum:
    """`kind` "git-blob" (sha1 of the git blob) or "sha256"; `value` a hex digest, for
    sha256 also a prefix of one (torch.hub's file-name convention)."""

    kind: str
    value: str

    def __post_init__(self) -> None:
        if self.kind not in ("git-blob", "sha256"):
            raise ValueError(f"checksum kind must be git-blob or sha256, got {self.kind!r}")

    def of(self, path: str | os.PathLike) -> str:
        """This kind of digest of the file at `path` (the full hex digest)."""
        path = Path(path)
        if self.kind == "git-blob":
            return hash_file(git_blob_digest(path.stat().st_size), path)
        return sha256_of(path)

    def matches(self, digest: str) -> bool:
        return digest.startswith(self.value) if self.kind == "sha256" else digest == self.value

    def describe(self, digest: str | None = None) -> str:
        """The expected value in words, or a file's `digest` (always whole: never called a prefix)."""
        shown = self.value if digest is None else digest
        label = "git blob id" if self.kind == "git-blob" else "sha256" + (" prefix" if len(shown) < 64 else "")
        return f"{label} {shown}"


def git_blob_digest(size: int):
    """A hashlib object that, updated with `size` bytes of content, gives git's blob id of it."""
    return hashlib.sha1(b"blob %d\0" % size)


def git_blob_id(data: bytes) -> str:
    """The id git gives a file with content `data`."""
    digest = git_blob_digest(len(data))
    digest.update(data)
    return digest.hexdigest()


# ---------------------------------------------------------------- the registry
@dataclass(frozen=True)
class WeightsEntry:
    """One released weights file: downloaded from `base_url/url_path` and stored as `file`
    in `checkpoints/` of the current folder, or in torch.hub's cache (`in_hub_cache`, where
    torchvision keeps its weights)."""

    name: str
    file: str
    what: str
    source: str  # in words, for `list` and checkpoints/README.md
    checksum: Checksum
    base_url: str
    url_path: str
    mirrored: bool = False  # DECFLOW_WEIGHTS_URL replaces base_url (the authors' files)
    in_hub_cache: bool = False

    def url(self, environ: Mapping[str, str]) -> str:
        base = (environ.get(BASE_URL_VARIABLE) if self.mirrored else None) or self.base_url
        return f"{base.rstrip('/')}/{self.url_path}"

    def destination(self, folder: str | os.PathLike | None = None) -> Path:
        """Where the file is stored: in `folder`, else its usual place."""
        if folder is None:
            folder = Path(torch.hub.get_dir()) / "checkpoints" if self.in_hub_cache else CHECKPOINTS_DIR
        return Path(folder) / self.file


def _authors_file(name: str, what: str, blob_id: str) -> WeightsEntry:
    file = f"{name}.pth"
    return WeightsEntry(
        name=name,
        file=file,
        what=what,
        base_url=AUTHORS_BASE_URL,
        url_path=f"checkpoints/{file}",
        mirrored=True,
        source=f"github.com/RIA1159/FacialFlowNet @ {AUTHORS_COMMIT[:7]}, checkpoints/{file}",
        checksum=Checksum("git-blob", blob_id),
    )


def _torchvision_resnet50() -> WeightsEntry:
    weights = ResNet50_Weights.IMAGENET1K_V1
    base_url, file = weights.url.rsplit("/", 1)
    return WeightsEntry(
        name="resnet50-imagenet",
        file=file,
        base_url=base_url,
        url_path=file,
        in_hub_cache=True,
        what="ImageNet ResNet-50 for the frozen semantic encoder (stage 1)",
        source="torchvision ResNet50_Weights.IMAGENET1K_V1",
        checksum=Checksum("sha256", torch.hub.HASH_REGEX.search(file).group(1)),
    )


REGISTRY: dict[str, WeightsEntry] = {
    entry.name: entry
    for entry in (
        _authors_file(
            "decflow-facialflownet",
            "DecFlow, the FacialFlowNet authors' release (evaluate.py, get_flow.py)",
            "fbd307fcf6c3e1dcaa033d87b82cabfc6f71bf61",
        ),
        _authors_file(
            "gma-sintel",
            "GMA trained on Sintel: the start of stage 1 (train.py --restore_ckpt)",
            "3c0fa1365fe8181a3e55c9e8e8ccd73ad28c402b",
        ),
        _torchvision_resnet50(),
    )
}
RELEASE = "decflow-facialflownet"
SEMANTIC = "resnet50-imagenet"


def registered_names() -> str:
    return ", ".join(REGISTRY)


def registered_entry(spec: str | os.PathLike) -> WeightsEntry | None:
    """The entry `spec` names: a registered name, or the path an entry is stored at by
    default (e.g. `checkpoints/gma-sintel.pth`); None otherwise."""
    spec = str(spec)
    if spec in REGISTRY:
        return REGISTRY[spec]
    target = Path(spec).absolute()
    return next((entry for entry in REGISTRY.values() if entry.destination().absolute() == target), None)


def offline_requested(flag: bool = False, environ: Mapping[str, str] = os.environ) -> bool:
    """`--offline`, or DECFLOW_OFFLINE set to anything but "", "0", "false", "no"."""
    return flag or environ.get(OFFLINE_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


# ---------------------------------------------------------------- downloading
def _refusal(head: bytes, content_type: str) -> str | None:
    """Why the first bytes of a download are not weights (None: they may be)."""
    if head.startswith(LFS_POINTER):
        return (
            "a Git LFS pointer, not the weights (the file is stored with Git LFS: point "
            f"{BASE_URL_VARIABLE} at a URL that serves the LFS content)"
        )
    if content_type.split(";")[0].strip().lower() == "text/html" or head.lstrip().lower().startswith(HTML_STARTS):
        return "an HTML page, not the weights (an error or login page? check the URL)"
    return None


def remove_partial_downloads(destination: Path) -> list[Path]:
    """Delete the `.{file}.XXXXXXXX.part` files that killed downloads of `destination` left."""
    return remove_temporaries(destination, PARTIAL_SUFFIX)


def _download(url: str, stream, *, progress: bool, label: str) -> tuple[int, int | None]:
    """Copy `url` into `stream`; (bytes received, Content-Length or None). UserError when
    the URL is malformed or the first bytes are not weights."""
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)
    except ValueError as error:  # urllib's word for a malformed URL (no scheme, say)
        raise UserError(f"malformed URL ({error})") from None
    with response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        content_type = response.headers.get("Content-Type", "")
        received, head = 0, b""
        with progress_bar(
            total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress
        ) as bar:
            for chunk in iter(lambda: response.read1(CHUNK), b""):  # what has arrived, up to CHUNK
                if len(head) < HEAD_BYTES:
                    head += chunk[: HEAD_BYTES - len(head)]
                    _refuse(head, content_type, complete=len(head) == HEAD_BYTES)
                stream.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    _refuse(head, content_type, complete=True)
    return received, expected


def _refuse(head: bytes, content_type: str, *, complete: bool) -> None:
    """UserError when the first bytes (all of HEAD_BYTES, or the whole body, once `complete`) are not weights."""
    refusal = _refusal(head, content_type) if complete or content_type.startswith("text/html") else None
    if refusal:
        raise UserError(refusal)


def download(
    entry: WeightsEntry, destination: Path, *, environ: Mapping[str, str] = os.environ, progress: bool = True
) -> Path:
    """Download `entry` to `destination` through a verified temporary file (see module doc).

    WeightsUnavailable (what went wrong; the command to run by hand, the URL and the
    destination) when the transfer fails, is cut short, is not weights or has another checksum.
    """
    url = entry.url(environ)
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_partial_downloads(destination)
    print(f"downloading {entry.name} from {url} to {destination}", file=sys.stderr, flush=True)
    try:
        with atomic_path(destination, mark=PARTIAL_SUFFIX, durable=True) as partial:
            with partial.open("wb") as stream:
                received, expected = _download(url, stream, progress=progress, label=entry.file)
            problem = None
            digest = entry.checksum.of(partial)
            if expected is not None and received != expected:
                problem = f"the transfer was cut short ({received} of {expected} bytes)"
            elif not entry.checksum.matches(digest):
                problem = (
                    f"checksum mismatch: expected {entry.checksum.describe()}, got "
                    f"{entry.checksum.describe(digest)} ({received} bytes)"
                )
            if problem:
                raise UserError(problem + "; deleted")
    except (OSError, UserError, http.client.HTTPException) as error:  # HTTP errors, refused, timeout, disk, not weights
        raise WeightsUnavailable(entry, _reason(error), url=url, destination=destination) from None
    return destination


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"cannot connect ({getattr(error.reason, 'strerror', None) or error.reason})"
    if isinstance(error, UserError):
        return f"the server sent {error}" if str(error).startswith(("a Git LFS", "an HTML")) else str(error)
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def fetch_command(entry: WeightsEntry, destination: Path | None = None) -> str:
    """The command that downloads `entry` to `destination` (default: its usual place)."""
    folder = "" if destination is None or destination == entry.destination() else f" --folder {destination.parent}"
    return f"{FETCH_COMMAND} {entry.name}{folder}"


def ensure(
    entry: WeightsEntry,
    *,
    folder: str | os.PathLike | None = None,
    offline: bool = False,
    environ: Mapping[str, str] = os.environ,
    progress: bool = True,
) -> Path:
    """The local file of `entry`, downloaded (and verified) when it is absent and `offline`
    is False. A file already there is used as it is, with a note when it is not the verified
    file (`verified`); WeightsUnavailable when it is absent and cannot be had."""
    destination = entry.destination(folder)
    if destination.is_file():
        verified(entry, destination)
        return destination
    if offline:
        raise WeightsUnavailable(
            entry,
            f"{destination} is missing and downloads are off (--offline or {OFFLINE_VARIABLE}=1)",
            url=entry.url(environ),
            destination=destination,
        )
    return download(entry, destination, environ=environ, progress=progress)


def verified(entry: WeightsEntry, path: str | os.PathLike) -> bool:
    """Whether the file at `path` is `entry`'s, by its checksum. When it is not, one line on
    stderr says so and that it is used as it is: once per version of the file in a process."""
    stat = Path(path).stat()
    return _verified_once(entry, str(path), str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _verified_once(entry: WeightsEntry, path: str, resolved: str, size: int, mtime_ns: int) -> bool:
    """`verified` of one version of a file (`resolved`, `size`, `mtime_ns`); `path` as given, for the note."""
    digest = entry.checksum.of(resolved)
    if entry.checksum.matches(digest):
        return True
    print(
        f"note: {path} is not the verified {entry.name} ({entry.checksum.describe(digest)}, expected "
        f"{entry.checksum.value}): using it as it is",
        file=sys.stderr,
        flush=True,
    )
    return False


def status(entry: WeightsEntry, folder: str | os.PathLike | None = None) -> str:
    """`missing`, `verified` or `checksum differs (...)` for the file of `entry`."""
    destination = entry.destination(folder)
    if not destination.is_file():
        return "missing"
    digest = entry.checksum.of(destination)
    return "verified" if entry.checksum.matches(digest) else f"checksum differs ({entry.checksum.describe(digest)})"


# ---------------------------------------------------------------- command line
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m core.weights",
        description="List, download and verify the released weights by name.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", allow_abbrev=False, help="registered names, their files, sources, checksums and status")
    fetch = commands.add_parser(
        "fetch", allow_abbrev=False, help="download and verify weights (kept when already there and verified)"
    )
    fetch.add_argument("names", nargs="+", metavar="NAME", help=f"registered names: {registered_names()}")
    fetch.add_argument("--force", action="store_true", help="download again even if the file is there")
    for sub in commands.choices.values():
        sub.add_argument(
            "--folder",
            default=None,
            help=f"store the files here (default: {CHECKPOINTS_DIR}/ for the authors' files, "
            "torch.hub's cache for torchvision's)",
        )
    return parser


def _list(folder: str | None) -> int:
    for entry in REGISTRY.values():
        print(
            f"{entry.name}: {entry.destination(folder)} [{status(entry, folder)}]\n"
            f"    {entry.what}\n    from {entry.url(os.environ)} ({entry.source})\n"
            f"    {entry.checksum.describe()}"
        )
    return 0


def _fetch(names: list[str], folder: str | None, force: bool) -> int:
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        return _error(f"unknown name {', '.join(unknown)} (registered: {registered_names()})")
    if offline_requested():
        return _error(f"downloads are off ({OFFLINE_VARIABLE} is set)")
    failed = 0
    for entry in map(REGISTRY.get, names):
        destination = entry.destination(folder)
        state = status(entry, folder)
        if state == "verified" and not force:
            print(f"{entry.name}: {destination} is already there ({entry.checksum.describe()} verified)")
            continue
        if state != "missing" and not force:
            failed = _error(
                f"{entry.name}: {destination} is there but its {state}\n  {FETCH_COMMAND} {entry.name} --force"
            )
            continue
        try:
            download(entry, destination)
        except WeightsUnavailable as error:
            failed = _error(str(error))
            continue
        print(f"{entry.name}: {destination} ({entry.checksum.describe()} verified)")
    return failed


def _error(message: str) -> int:
    """Print `core.weights: error: {message}`; the exit status of a usage or input error (2, as argparse's)."""
    print(f"core.weights: error: {message}", file=sys.stderr, flush=True)
    return USAGE_ERROR_STATUS


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.command == "list":
        return _list(args.folder)
    return _fetch(args.names, args.folder, args.force)


if __name__ == "__main__":
    sys.exit(main())
