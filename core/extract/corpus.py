"""A whole corpus at a time (`get_flow.py --corpus DIR`): every sequence under a folder, shared
among processes, resumable after a kill.

- Sequences (`discover_sequences`): every leaf folder of frames and every video file under DIR
  (hidden entries skipped). A sequence's outputs go to its relative path under `--output`
  (a video's into a folder named after the file: `a/clip.mp4/`).
- Shares (`Shard`): a process takes the sequences `index, index + count, ...` of the sorted list,
  whole, so that a warm start stays in one process and no two processes write one file. The share
  comes from torchrun's RANK/WORLD_SIZE (the process runs on its LOCAL_RANK's GPU) or from
  `--shard I/N` (SLURM arrays).
- Atomic and resumable: a sequence is written into a hidden folder beside its place
  (`.<name>.<pid>-<random>.partial`), with `manifest.json` (the weights' sha256, the options that
  change the outputs, the input files with sizes and times, the frame count, every file and its
  size in bytes), then renamed into place. A rerun skips a sequence whose manifest matches the request and
  whose files are all there, redoes one whose manifest does not match, and, with `overwrite`,
  redoes all; a folder in the way that no corpus run wrote is a failure unless `overwrite`. What a
  killed run leaves (its in-flight hidden folders) is removed by the next run's owner of the sequence.
- Failures (a damaged frame, an unreadable video, a single frame) fail only their own sequence:
  the failures file holds one JSON line per failed sequence ({"sequence", "error"}).
- Progress: one bar over sequences and pairs (pairs per second) on the lead process only
  (rank 0 under torchrun: over every rank's work, read from the ranks' progress files in
  `--output`/.corpus/); the lead's summary gives done, skipped, failed and the time.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch.distributed as dist
from tqdm import tqdm

from core.errors import UserError
from core.extract.sequence import ExtractOptions, extract_sequence
from core.extract.sources import open_source
from core.inference import Estimator
from core.utils.atomic import write_text_atomic
from core.utils.frames import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, folder_frames, natural_key
from core.utils.progress import progress_bar

MANIFEST_NAME = "manifest.json"
# Raise when a manifest's meaning changes: older ones are then redone (2: sizes named with their units)
MANIFEST_VERSION = 2
PARTIAL_SUFFIX = ".partial"  # a sequence being written
REPLACED_SUFFIX = ".replaced"  # an earlier output being swapped out
PROGRESS_FOLDER = ".corpus"  # in --output, under torchrun: one progress file per rank
PROGRESS_INTERVAL_S = 0.5  # a rank writes its progress file, the lead redraws, at most this often
FAILURES_FILE = "failures.jsonl"


# ---------------------------------------------------------------- sequences
@dataclass(frozen=True)
class Sequence:
    """A folder of frames or a video file; `relative`: its path under the corpus (POSIX), and of its outputs."""

    path: Path
    relative: str
    kind: str  # "frames" or "video"


def _relative_key(sequence: Sequence) -> list:
    return [natural_key(Path(part)) for part in sequence.relative.split("/")]


def discover_sequences(root: Path) -> tuple[list[Sequence], list[str]]:
    """The sequences under `root` in natural order, and the folders that hold frames but are not
    sequences (they also hold subfolders or videos, whose outputs would sit inside theirs)."""
    sequences, mixed = [], []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        here = Path(folder)
        relative = here.relative_to(root).as_posix()
        visible = [name for name in files if not name.startswith(".")]
        videos = [name for name in visible if Path(name).suffix.lower() in VIDEO_EXTENSIONS]
        has_frames = any(Path(name).suffix.lower() in IMAGE_EXTENSIONS for name in visible)
        for name in videos:
            sequences.append(Sequence(here / name, name if relative == "." else f"{relative}/{name}", "video"))
        if has_frames and (subfolders or videos or relative == "."):
            mixed.append(relative)
        elif has_frames:
            sequences.append(Sequence(here, relative, "frames"))
    return sorted(sequences, key=_relative_key), sorted(mixed)


def describe_mixed(mixed: list[str]) -> str:
    """One line on the folders of frames that are no sequence."""
    shown = ", ".join(mixed[:3]) + (" ..." if len(mixed) > 3 else "")
    return f"{len(mixed)} folders hold frames besides subfolders or videos: not sequences ({shown})"


def check_corpus(root: Path, output: Path) -> None:
    """UserError when `root` is no folder, or when `output` and `root` overlap (outputs would be inputs)."""
    if not root.is_dir():
        raise UserError(f"--corpus {root} is not a folder" if root.exists() else f"--corpus {root} not found")
    corpus, out = root.resolve(), output.resolve()
    if out == corpus or out.is_relative_to(corpus):
        raise UserError(f"--output {output} is inside --corpus {root}: outputs would become sequences")
    if corpus.is_relative_to(out):
        raise UserError(f"--corpus {root} is inside --output {output}: outputs would replace inputs")


def find_sequences(root: Path, output: Path) -> tuple[list[Sequence], list[str]]:
    """`check_corpus`, then `discover_sequences`; UserError when there is no sequence."""
    check_corpus(root, output)
    sequences, mixed = discover_sequences(root)
    if not sequences and "." in mixed and len(mixed) == 1:
        raise UserError(f"--corpus {root} is itself a folder of frames: use --frames {root}")
    if not sequences:
        where = f"; {len(mixed)} folders hold frames besides subfolders or videos" if mixed else ""
        raise UserError(f"--corpus {root}: no sequence (no leaf folder of images, no video file such as .mp4){where}")
    return sequences, mixed


# ---------------------------------------------------------------- shares
@dataclass(frozen=True)
class Shard:
    """This process's share of a corpus: sequences `index`, `index + count`, ... `local_rank`:
    torchrun's LOCAL_RANK (None: not under torchrun)."""

    index: int = 0
    count: int = 1
    local_rank: int | None = None

    @property
    def torchrun(self) -> bool:
        return self.local_rank is not None

    @property
    def leads(self) -> bool:
        """Draws the bar (and, under torchrun, reports every rank's work)."""
        return self.index == 0

    @property
    def label(self) -> str:
        kind = "rank" if self.torchrun else "shard"
        return f"{kind} {self.index}/{self.count}" if self.count > 1 else ""

    @property
    def failures_name(self) -> str:
        """One failures file per run; one per shard of `--shard` (SLURM tasks may run apart)."""
        return FAILURES_FILE if self.torchrun or self.count == 1 else f"failures.{self.index}-of-{self.count}.jsonl"

    def take(self, sequences: list[Sequence]) -> list[Sequence]:
        return sequences[self.index :: self.count]


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` -> (I, N); UserError unless 0 <= I < N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise UserError(f"--shard {text}: give I/N, e.g. 0/4 (this process takes sequences I, I+N, I+2N, ...)")
    index, count = map(int, match.groups())
    if not 0 <= index < count:
        raise UserError(f"--shard {text}: I must be one of 0..N-1 (N >= 1)")
    return index, count


def resolve_shard(spec: str | None, environ: Mapping[str, str]) -> Shard:
    """The share of torchrun's process (RANK, WORLD_SIZE > 1, LOCAL_RANK), else of `--shard I/N`, else all."""
    world = int(environ.get("WORLD_SIZE", "1"))
    if "RANK" in environ and world > 1:
        if spec is not None:
            raise UserError(f"--shard {spec}: under torchrun each process takes its RANK's share: drop --shard")
        return Shard(int(environ["RANK"]), world, int(environ.get("LOCAL_RANK", "0")))
    return Shard(*parse_shard(spec)) if spec is not None else Shard()


def synchronise_start(shard: Shard, output: Path) -> None:
    """Under torchrun: rank 0 clears the last run's progress files and failures file before any
    rank writes its own (a gloo barrier, the process group closed right after)."""
    if not shard.torchrun:
        return
    dist.init_process_group(backend="gloo")
    try:
        if shard.leads:
            shutil.rmtree(output / PROGRESS_FOLDER, ignore_errors=True)
            (output / FAILURES_FILE).unlink(missing_ok=True)
            (output / PROGRESS_FOLDER).mkdir(parents=True, exist_ok=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- folders put in place whole
def _hidden_name(target: Path, suffix: str) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_leftovers(targets: Iterable[Path]) -> list[Path]:
    """Remove the hidden folders that killed runs left beside `targets` (`_hidden_name`'s, of
    these targets only); returns them."""
    by_folder: dict[Path, list[str]] = {}
    for target in targets:
        by_folder.setdefault(target.parent, []).append(re.escape(target.name))
    removed = []
    for folder, names in by_folder.items():
        if not folder.is_dir():
            continue
        suffixes = "|".join(re.escape(s) for s in (PARTIAL_SUFFIX, REPLACED_SUFFIX))
        pattern = re.compile(rf"\.(?:{'|'.join(names)})\.\d+-[0-9a-f]{{8}}(?:{suffixes})")
        for entry in folder.iterdir():
            if pattern.fullmatch(entry.name):
                _remove(entry)
                removed.append(entry)
    return removed


@contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A new hidden folder beside `target`, renamed to `target` when the block succeeds (what was
    there, a folder or a link, is swapped out and removed); removed when the block fails, leaving
    `target` as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = _hidden_name(target, PARTIAL_SUFFIX)
    staged.mkdir()
    try:
        yield staged
        if os.path.lexists(target):
            old = _hidden_name(target, REPLACED_SUFFIX)
            os.rename(target, old)
            os.rename(staged, target)
            _remove(old)
        else:
            os.rename(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


# ---------------------------------------------------------------- manifests
def input_files(sequence: Sequence, *, stride: int, max_frames: int | None) -> list[Path]:
    """The files a sequence reads with these options (UserError: a folder with fewer than 2 frames)."""
    if sequence.kind == "video":
        return [sequence.path]
    return folder_frames(sequence.path, stride=stride, max_frames=max_frames).paths


def fingerprint(paths: list[Path]) -> list[dict]:
    """The name, size and modification time of each input file: a changed input does not match."""
    return [
        {"name": path.name, "size_bytes": (stat := path.stat()).st_size, "mtime_ns": stat.st_mtime_ns} for path in paths
    ]


def read_manifest(folder: Path) -> dict | None:
    """A sequence folder's manifest (None: none, or not one a corpus run wrote)."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "request" in manifest else None


def is_complete(folder: Path, manifest: dict, request: dict) -> bool:
    """The manifest records this request, and its files are all there with their sizes."""
    files = manifest.get("file_bytes")
    if manifest["request"] != request or not isinstance(files, dict):
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in files.items())


def write_manifest(folder: Path, sequence: Sequence, request: dict, pairs: int) -> None:
    files = {path.name: path.stat().st_size for path in sorted(folder.iterdir()) if path.name != MANIFEST_NAME}
    manifest = {"sequence": sequence.relative, "request": request, "frames": pairs + 1, "file_bytes": files}
    write_text_atomic(folder / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")


# ---------------------------------------------------------------- progress
@dataclass
class Tally:
    """One process's counts (what its progress file holds)."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    pairs: int = 0
    failures: list[dict] = field(default_factory=list)
    finished: bool = False

    @property
    def sequences(self) -> int:
        return self.done + self.skipped + self.failed

    def add(self, other: Tally) -> Tally:
        return Tally(
            self.done + other.done,
            self.skipped + other.skipped,
            self.failed + other.failed,
            self.pairs + other.pairs,
            self.failures + other.failures,
            self.finished and other.finished,
        )


def write_failures(path: Path, failures: list[dict]) -> None:
    """The failures file: one JSON line per failed sequence ({"sequence", "error"})."""
    write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in failures))


class Progress:
    """This process's tally; on the lead, a bar over `total` sequences with the pairs and pairs
    per second of every process (under torchrun, read from the ranks' progress files)."""

    def __init__(self, *, total: int, shard: Shard, output: Path, stream=sys.stderr) -> None:
        self.shard, self.output = shard, output
        self.tally = Tally()
        self.started = time.perf_counter()
        self.last = float("-inf")
        self.bar = None
        if shard.leads:
            self.bar = progress_bar(total=total, desc="corpus", unit="seq", file=stream)
        self._save()

    def _file(self, index: int) -> Path:
        return self.output / PROGRESS_FOLDER / f"rank-{index}.json"

    def _save(self) -> None:
        if self.shard.torchrun:
            write_text_atomic(self._file(self.shard.index), json.dumps(self.tally.__dict__))
        if self.tally.failures and not self.shard.torchrun:
            write_failures(self.output / self.shard.failures_name, self.tally.failures)

    def everyone(self) -> Tally:
        """Every process's tally that can be seen: this one's, under torchrun with the other ranks'."""
        total = self.tally
        if self.shard.torchrun:
            for index in range(self.shard.count):
                if index != self.shard.index and (tally := self._read(index)) is not None:
                    total = total.add(tally)
                elif index != self.shard.index:
                    total = total.add(Tally())  # not written yet: not finished
        return total

    def _read(self, index: int) -> Tally | None:
        try:
            return Tally(**json.loads(self._file(index).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def tick(self, *, force: bool = False) -> None:
        """Write this rank's file and redraw the bar, at most every PROGRESS_INTERVAL_S unless `force`."""
        now = time.perf_counter()
        if not force and now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = now
        if not self.shard.leads:
            self._save()
            return
        self._draw(self.everyone())

    def _draw(self, total: Tally) -> None:
        self.bar.n = total.sequences
        rate = total.pairs / max(self.elapsed(), 1e-9)
        self.bar.set_postfix_str(f"{total.pairs} pairs, {rate:.2f} pairs/s, {total.failed} failed", refresh=False)
        self.bar.refresh()

    def pair(self) -> None:
        self.tally.pairs += 1
        self.tick()

    def sequence(self, outcome: str, relative: str, error: str | None = None) -> None:
        """Count a sequence as done, skipped or failed (with its error)."""
        setattr(self.tally, outcome, getattr(self.tally, outcome) + 1)
        if error is not None:
            self.tally.failures.append({"sequence": relative, "error": error})
            self._save()
        self.tick(force=error is not None)

    def write(self, line: str) -> None:
        """A line that does not break the bar."""
        tqdm.write(line, file=sys.stderr)

    def finish(self) -> Tally:
        """Close this process's share; the lead under torchrun waits for every rank and writes the
        run's failures file. Returns the tally the summary reports."""
        self.tally.finished = True
        self._save()
        total = self.tally
        if self.shard.torchrun and self.shard.leads:
            while not (total := self.everyone()).finished:
                self.tick()
                time.sleep(PROGRESS_INTERVAL_S)
            if total.failures:
                write_failures(self.output / FAILURES_FILE, total.failures)
            shutil.rmtree(self.output / PROGRESS_FOLDER, ignore_errors=True)
        if self.bar is not None:
            self._draw(total)
            self.bar.close()
        return total


# ---------------------------------------------------------------- the run
@dataclass(frozen=True)
class CorpusJob:
    """What every sequence of a run shares. `recipe`: the options that change the outputs, as the
    manifests record them (JSON values); `inputs`: (what, path) no output may be (the checkpoint)."""

    output: Path
    options: ExtractOptions  # its `output` is replaced by each sequence's own folder
    stride: int
    max_frames: int | None
    weights_sha256: str
    recipe: dict
    overwrite: bool = False
    inputs: tuple[tuple[str, str], ...] = ()

    def request(self, paths: list[Path]) -> dict:
        return {
            "version": MANIFEST_VERSION,
            "weights_sha256": self.weights_sha256,
            "options": self.recipe,
            "inputs": fingerprint(paths),
        }


@dataclass
class CorpusSummary:
    tally: Tally
    seconds: float
    sequences: int  # of the run (every rank's under torchrun), or of this shard
    failures_file: Path | None
    label: str = ""  # "shard 1/4" for one shard of --shard

    def line(self) -> str:
        t = self.tally
        rate = t.pairs / max(self.seconds, 1e-9)
        where = f"{self.label}: " if self.label else ""
        return (
            f"{where}{t.done} done, {t.skipped} skipped, {t.failed} failed of {self.sequences} sequences "
            f"in {self.seconds:.1f} s ({t.pairs} pairs, {rate:.2f} pairs/s)"
        )


def error_text(error: Exception) -> str:
    """One line for a failures file: a bad-input error's message, any other error's type too (a bug shows)."""
    text = str(error).splitlines()[0] if str(error) else ""
    return text if isinstance(error, UserError) else f"{type(error).__name__}: {text}"


def extract_one(sequence: Sequence, job: CorpusJob, estimator: Estimator, progress: Progress) -> str:
    """Skip, or write, one sequence; returns "skipped" or "done". Errors propagate (one line)."""
    target = job.output / sequence.relative
    request = job.request(input_files(sequence, stride=job.stride, max_frames=job.max_frames))
    if os.path.lexists(target):
        manifest = None if target.is_symlink() else read_manifest(target)
        if manifest is None and not job.overwrite:
            raise UserError(
                f"{target} is in the way: no --corpus run wrote it (no {MANIFEST_NAME}); --overwrite replaces it"
            )
        if manifest is not None and not job.overwrite and is_complete(target, manifest, request):
            return "skipped"
    frames, video = (str(sequence.path), None) if sequence.kind == "frames" else (None, str(sequence.path))
    with staged_folder(target) as folder:
        source = open_source(frames=frames, video=video, stride=job.stride, max_frames=job.max_frames)
        result = extract_sequence(
            source,
            estimator,
            replace(job.options, output=folder),
            inputs=[*job.inputs, *(("input", path) for path in source.paths)],
            log=progress.write,
            progress=False,
            on_pair=progress.pair,
        )
        if result.warning:
            progress.write(f"warning: {sequence.relative}: {result.warning}")
        write_manifest(folder, sequence, request, len(result.names))
    return "done"


def extract_corpus(
    sequences: list[Sequence], shard: Shard, job: CorpusJob, estimator: Estimator
) -> CorpusSummary | None:
    """Extract this process's share of `sequences`; a sequence that fails is recorded and the run
    goes on. Returns the summary to print (None for torchrun's other ranks: rank 0 reports)."""
    mine = shard.take(sequences)
    job.output.mkdir(parents=True, exist_ok=True)
    synchronise_start(shard, job.output)
    if not shard.torchrun:
        (job.output / shard.failures_name).unlink(missing_ok=True)  # the last run's, this run writes its own
    remove_leftovers(job.output / sequence.relative for sequence in mine)
    progress = Progress(total=len(sequences) if shard.torchrun else len(mine), shard=shard, output=job.output)
    for sequence in mine:
        try:
            progress.sequence(extract_one(sequence, job, estimator, progress), sequence.relative)
        except Exception as error:  # noqa: BLE001 - any sequence's failure is recorded, the corpus goes on
            progress.sequence("failed", sequence.relative, error_text(error))
    tally = progress.finish()
    if shard.torchrun and not shard.leads:
        return None
    failures = job.output / shard.failures_name
    return CorpusSummary(
        tally,
        progress.elapsed(),
        len(sequences) if shard.torchrun or shard.count == 1 else len(mine),
        failures if tally.failed else None,
        "" if shard.torchrun else shard.label,
    )


def check_summary(summary: CorpusSummary) -> None:
    """UserError (one line) when sequences failed: none readable, or how many."""
    t = summary.tally
    if not t.failed:
        return
    where = f"reasons in {summary.failures_file}"
    if t.done + t.skipped == 0:
        raise UserError(f"no readable sequence in --corpus ({t.failed} failed; {where})")
    raise UserError(f"{t.failed} of {summary.sequences} sequences failed ({where})")
