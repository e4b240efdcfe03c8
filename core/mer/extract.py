"""Each clip's classifier input, from its onset->apex flow, cached per clip (`python -m core.mer extract`).

For a clip: its onset and apex frames (`corpora.read_onset_apex`) -> the clip's one fixed face crop
(`core.face.crop`, planned from frames sampled among onset..apex, as `get_flow.py --face_crop`),
resized to `crop_size`; for a copy whose frames are face crops already, the whole frame, with no
detection, resized to `crop_size` x `crop_size` (each axis by its own factor: no padding) -> the
onset->apex flow of the method -> `inputs.classifier_input`.
Methods (`--flow`): DecFlow's `facial`, `expression`, `head` (one network run gives the three);
OpenCV's `dis` and `farneback` (core.evaluation's baselines); a synthetic corpus's ground truth
`gt-facial`, `gt-head`, `gt-expression` (`gt` is `gt-expression`); a user's flows `files:DIR`
(`DIR/<dataset>/<subject>/<clip>.npy` or `.flo`, onset->apex `[H, W, 2]`). Ground-truth and user flows
are taken as they are: no crop.

The cache, under `<output>/cache/<method>-<size>/`, holds one folder per clip
(`<dataset>/<subject>/<clip>/`): `input.npy` (`[3, size, size]` float32) and `manifest.json` (the
request that made it: method, weights' sha256 and how they ran, crop options, cache version, size,
input files with sizes and times; and the crop chosen). As `get_flow.py --corpus`
(core/extract/corpus.py): a clip is written into a hidden folder and renamed into place, a rerun
skips a clip whose manifest matches, a clip that fails (a damaged frame, no face) is recorded in
`failures.jsonl` and the run goes on; one bar, one summary line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError
from core.evaluation import OpenCVFlowPredictor
from core.extract.corpus import (
    FAILURES_FILE,
    MANIFEST_NAME,
    CorpusSummary,
    Progress,
    Shard,
    error_text,
    fingerprint,
    is_complete,
    read_manifest,
    remove_leftovers,
    staged_folder,
)
from core.face.crop import FaceCrop, FaceCropOptions, plan_crop, sample_positions
from core.inference import Estimator
from core.mer import inputs, synthetic
from core.mer.clips import Clip
from core.mer.corpora import DatasetCopy, frame_file, read_onset_apex
from core.utils.atomic import atomic_path
from core.utils.flow_io import read_flo, read_image, read_npy

CACHE_VERSION = 2  # raise when a cache's meaning changes (recipe, crop, layout): older clips are then redone
INPUT_NAME = "input.npy"
CACHE_FOLDER = "cache"
NETWORK_FLOWS = ("facial", "expression", "head")  # DecFlowOutput's flows
OPENCV_FLOWS = ("dis", "farneback")
GROUND_TRUTH_KINDS = ("facial", "head", "expression")  # synthetic.ground_truth_file's kinds
GROUND_TRUTH_PREFIX = "gt-"
GROUND_TRUTH_DEFAULT = "gt"  # the expression flow: what the classifier is meant to see
FILES_PREFIX = "files:"
FLOW_FILE_SUFFIXES = (".npy", ".flo")
WHOLE_FRAME = "none (the copy's frames are face crops: the whole frame)"


# ---------------------------------------------------------------- flow methods
@dataclass(frozen=True)
class FrameFlow:
    """A flow computed from the clip's cropped onset and apex frames: `predict` maps images
    `[1, 3, S, S]` (RGB 0..255) to the flow `[1, 2, S, S]`; `record`: what makes it, for manifests."""

    name: str
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field(compare=False)
    record: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FileFlow:
    """A flow read from a file per clip (`locate`), as it is."""

    name: str
    locate: Callable[[Clip], Path] = field(compare=False)
    record: dict = field(default_factory=dict)


FlowMethod = FrameFlow | FileFlow


def parse_flow(spec: str) -> tuple[str, str]:
    """`--flow` -> (kind, detail): ("network", "expression"), ("opencv", "dis"), ("gt", "facial"),
    ("files", DIR); UserError listing the choices otherwise."""
    if spec in NETWORK_FLOWS:
        return "network", spec
    if spec in OPENCV_FLOWS:
        return "opencv", spec
    if spec == GROUND_TRUTH_DEFAULT:
        return "gt", "expression"
    if spec.startswith(GROUND_TRUTH_PREFIX) and spec[len(GROUND_TRUTH_PREFIX) :] in GROUND_TRUTH_KINDS:
        return "gt", spec[len(GROUND_TRUTH_PREFIX) :]
    if spec.startswith(FILES_PREFIX) and spec[len(FILES_PREFIX) :]:
        return "files", spec[len(FILES_PREFIX) :]
    choices = [*NETWORK_FLOWS, *OPENCV_FLOWS, GROUND_TRUTH_DEFAULT]
    choices += [GROUND_TRUTH_PREFIX + k for k in GROUND_TRUTH_KINDS] + ["files:DIR"]
    raise UserError(f"--flow {spec}: choose one of {', '.join(choices)}")


def network_flow(estimator: Estimator, kind: str, weights_sha256: str) -> FrameFlow:
    """DecFlow's `kind` flow (facial, expression or head) as `estimator` runs it."""

    def predict(image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        return getattr(estimator(image1, image2), kind)

    record = {"method": f"decflow-{kind}", "weights_sha256": weights_sha256, **estimator.description()}
    return FrameFlow(kind, predict, record)


def opencv_flow(method: str) -> FrameFlow:
    """OpenCV's DIS or Farneback flow (core.evaluation's baseline)."""
    predictor = OpenCVFlowPredictor(method)
    return FrameFlow(method, lambda image1, image2: predictor(image1, image2)[0], {"method": predictor.description})


def ground_truth_flow(kind: str) -> FileFlow:
    """The synthetic corpus's ground-truth `kind` flow of each clip."""
    return FileFlow(
        GROUND_TRUTH_PREFIX + kind, lambda clip: synthetic.ground_truth_file(clip, kind), {"method": f"gt-{kind}"}
    )


def user_flow_file(folder: Path, clip: Clip) -> Path:
    """`folder/<dataset>/<subject>/<clip>.npy` or `.flo`; UserError when neither or both are there."""
    stem = folder.joinpath(*clip.key)
    found = [stem.with_name(stem.name + suffix) for suffix in FLOW_FILE_SUFFIXES]
    found = [path for path in found if path.is_file()]
    if len(found) != 1:
        what = "no" if not found else "two"
        raise UserError(
            f"--flow files:{folder}: {what} flow file for clip {'/'.join(clip.key)} (expected {stem}.npy or {stem}.flo)"
        )
    return found[0]


def user_flow(folder: Path) -> FileFlow:
    """The user's precomputed onset->apex flows under `folder`."""
    if not folder.is_dir():
        raise UserError(f"--flow files:{folder}: not a folder")
    return FileFlow(
        f"files-{folder.name}", lambda clip: user_flow_file(folder, clip), {"method": f"files:{folder.resolve()}"}
    )


def read_flow_file(path: Path) -> np.ndarray:
    """A `.npy` or `.flo` flow `[H, W, 2]` float32 (ValueError naming the file otherwise)."""
    flow = read_flo(path) if path.suffix == ".flo" else read_npy(path)
    if flow.ndim != 3 or flow.shape[2] != 2 or not np.isfinite(flow).all():
        raise ValueError(f"{path}: a flow must be finite [H, W, 2], got shape {flow.shape}")
    return flow.astype(np.float32)


# ---------------------------------------------------------------- crops
@dataclass(frozen=True)
class WholeFrame:
    """The crop of a copy whose frames are face crops: the whole frame resized to `size` x `size`,
    each axis by its own factor (no detection, no padding; `inputs.resize_square`)."""

    frame_size: tuple[int, int]  # (height, width) of the frames
    size: int

    def crop(self, rgb: np.ndarray) -> np.ndarray:
        """The frame resized to `[size, size, 3]`."""
        if rgb.shape[:2] != self.frame_size:
            raise ValueError(
                f"frame of {rgb.shape[1]}x{rgb.shape[0]} px in a clip of {self.frame_size[1]}x{self.frame_size[0]}"
            )
        return np.ascontiguousarray(inputs.resize_square(rgb, self.size))

    def record(self) -> dict:
        """What the clip's manifest says of the crop (units as core.face.crop's records)."""
        height, width = self.frame_size
        return {
            "detector": WHOLE_FRAME,
            "frame_wh_px": [width, height],
            "crop_wh_px": [self.size, self.size],
            "crop_px_per_frame_px_xy": [self.size / width, self.size / height],
        }


def crop_samples(clip: Clip, onset: np.ndarray, apex: np.ndarray, samples: int) -> list[tuple[str, np.ndarray]]:
    """(label, RGB) of the frames the detector runs on: `samples` evenly spaced among onset..apex
    of a folder clip (onset and apex included), the onset and apex frames of a video clip."""
    if not clip.frames.is_dir():
        return [(f"frame {clip.onset}", onset), (f"frame {clip.apex}", apex)]
    numbers = [clip.onset + k for k in sample_positions(clip.apex - clip.onset + 1, samples)]
    known = {clip.onset: onset, clip.apex: apex}
    return [(frame_file(clip, n).name, known[n] if n in known else read_image(frame_file(clip, n))) for n in numbers]


def clip_crop(
    clip: Clip, onset: np.ndarray, apex: np.ndarray, cropped: bool, face: FaceCropOptions
) -> FaceCrop | WholeFrame:
    """The clip's one crop: the whole frame for a `cropped` copy, else planned from its onset..apex frames."""
    if cropped:
        return WholeFrame(frame_size=onset.shape[:2], size=face.size)
    return plan_crop(crop_samples(clip, onset, apex, face.samples), face, f"clip {'/'.join(clip.key)}")


def as_image(rgb: np.ndarray) -> torch.Tensor:
    """RGB uint8 `[H, W, 3]` -> `[1, 3, H, W]` float32 0..255."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()


# ---------------------------------------------------------------- one clip
@dataclass(frozen=True)
class ExtractJob:
    """What every clip of a run shares: the method, the input size, the crop options, the cache folder."""

    method: FlowMethod
    size: int
    face: FaceCropOptions
    cache: Path  # <output>/cache/<method>-<size>
    overwrite: bool = False

    def crop_request(self, copy: DatasetCopy) -> dict | None:
        if isinstance(self.method, FileFlow):
            return None
        if copy.cropped:
            return {"detector": WHOLE_FRAME, "size": self.face.size}
        return {"detector": self.face.detector.name, "margin": self.face.margin, "size": self.face.size}

    def input_files(self, clip: Clip) -> list[Path]:
        if isinstance(self.method, FileFlow):
            return [self.method.locate(clip)]
        if clip.frames.is_dir():
            return [frame_file(clip, clip.onset), frame_file(clip, clip.apex)]
        return [clip.frames]

    def request(self, clip: Clip, copy: DatasetCopy) -> dict:
        return {
            "version": CACHE_VERSION,
            "flow": self.method.record,
            "size": self.size,
            "crop": self.crop_request(copy),
            "inputs": fingerprint(self.input_files(clip)),
        }


def clip_folder(cache: Path, clip: Clip) -> Path:
    """`cache/<dataset>/<subject>/<clip>`; UserError for a name that is no plain file name."""
    for part in clip.key:
        if not part or part in (".", "..") or "/" in part or "\\" in part or part.startswith("."):
            raise UserError(f"clip {'/'.join(clip.key)}: {part!r} cannot name a cache folder")
    return cache.joinpath(*clip.key)


def clip_flow(clip: Clip, copy: DatasetCopy, job: ExtractJob) -> tuple[np.ndarray, dict | None]:
    """The clip's onset->apex flow `[H, W, 2]` and the crop's record (None: no crop)."""
    if isinstance(job.method, FileFlow):
        return read_flow_file(job.method.locate(clip)), None
    onset, apex = read_onset_apex(clip)
    crop = clip_crop(clip, onset, apex, copy.cropped, job.face)
    flow = job.method.predict(as_image(crop.crop(onset)), as_image(crop.crop(apex)))  # [1, 2, S, S]
    return flow[0].permute(1, 2, 0).float().cpu().numpy(), crop.record()


def extract_clip(clip: Clip, copy: DatasetCopy, job: ExtractJob) -> str:
    """Skip, or write, one clip's cache folder; returns "skipped" or "done". Errors propagate."""
    target = clip_folder(job.cache, clip)
    request = job.request(clip, copy)
    if os.path.lexists(target):
        manifest = None if target.is_symlink() else read_manifest(target)
        if manifest is None and not job.overwrite:
            raise ValueError(f"{target} is in the way: no extraction wrote it (no {MANIFEST_NAME}); --overwrite")
        if manifest is not None and not job.overwrite and is_complete(target, manifest, request):
            return "skipped"
    flow, crop = clip_flow(clip, copy, job)
    features = inputs.classifier_input(flow, size=job.size)  # [3, size, size]
    with staged_folder(target) as folder:
        with atomic_path(folder / INPUT_NAME) as tmp:
            np.save(tmp, features.astype(np.float32))
        manifest = {
            "clip": list(clip.key),
            "request": request,
            "crop_chosen": crop,
            "file_bytes": {INPUT_NAME: (folder / INPUT_NAME).stat().st_size},
        }
        with atomic_path(folder / MANIFEST_NAME) as tmp:
            tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return "done"


# ---------------------------------------------------------------- the run
def extract_clips(work: Sequence[tuple[Clip, DatasetCopy]], job: ExtractJob) -> CorpusSummary:
    """Each (clip, its copy) into the cache; a clip that fails is recorded in `failures.jsonl` and
    the run goes on. Returns the summary (its line: done, skipped, failed, time)."""
    job.cache.mkdir(parents=True, exist_ok=True)
    (job.cache / FAILURES_FILE).unlink(missing_ok=True)  # the last run's: this run writes its own
    remove_leftovers(clip_folder(job.cache, clip) for clip, _ in work)
    progress = Progress(total=len(work), shard=Shard(), output=job.cache)
    for clip, copy in work:
        name = "/".join(clip.key)
        try:
            outcome = extract_clip(clip, copy, job)
        except Exception as error:  # noqa: BLE001 - any clip's failure is recorded, the run goes on
            progress.sequence("failed", name, error_text(error))
            continue
        if outcome == "done":
            progress.pair()
        progress.sequence(outcome, name)
    tally = progress.finish()
    return CorpusSummary(tally, progress.elapsed(), len(work), job.cache / FAILURES_FILE if tally.failed else None)


def load_input(cache: Path, clip: Clip, size: int) -> np.ndarray | None:
    """The cached `[3, size, size]` input of a clip (None: not extracted, e.g. it failed)."""
    folder = clip_folder(cache, clip)
    if folder.is_symlink() or read_manifest(folder) is None or not (folder / INPUT_NAME).is_file():
        return None
    features = read_npy(folder / INPUT_NAME)
    if features.shape != (3, size, size):
        raise UserError(f"{folder / INPUT_NAME}: shape {features.shape}, expected {(3, size, size)}: extract again")
    return features
