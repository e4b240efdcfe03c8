"""FacialFlowNet dataset (the training loader is core.training.data).

Layout (``{split}`` is ``train``, ``val`` or ``test``)::

    <root>/image/facial/{split}/<emotion>/<subject>/0001.jpg ...   n frames
    <root>/flow/facial/{split}/<emotion>/<subject>/0001.flo ...    n-1 facial flows
    <root>/flow/head/{split}/<emotion>/<subject>/0001.flo ...      n-1 head flows
    <root>/mask/{split}/<emotion>/<subject>/0001.npy ...           n-1 or n masks

Pair ``i`` of a sequence is (frame ``i``, frame ``i+1``) in sorted order, as in the
reference; its facial flow, head flow and mask are the files with the stem of frame
``i`` (``0001.flo`` and ``0001.npy`` go with ``0001.jpg -> 0002.jpg``). A mask for the
last frame is allowed and unused. Unlike the reference, which pairs files by sorted
position only (so one missing file shifts every later label), every sequence is
verified when the dataset is built; a missing folder, or a label file missing or
named after no pair's first frame (e.g. ``0005.flo`` beside frames ``0001..0005``),
raises ``UserError`` naming the sequence and the file. Only a label folder in which
no file is named after a frame (another naming scheme) is paired by sorted order,
after checking its count; one warning per split says so. ``image/head`` is not read
(the reference does not use it for training).

Unlike the reference, a mask is binarised by value (``> 0.5`` for floats, ``!= 0``
for integers), not cast to uint8, and non-finite ground truth is marked invalid and
set to 0 (see :func:`nonfinite_ground_truth`).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils import data

from core.defaults import DATASET_ROOT
from core.errors import UserError
from core.utils import flow_io
from core.utils.augmentor import FacialFlowAugmentor

logger = logging.getLogger(__name__)
# Label folders of a split, by name: <root>/<folder>/<split>/<emotion>/<subject>/
LABEL_FOLDERS = {"flow/facial": Path("flow", "facial"), "flow/head": Path("flow", "head"), "mask": Path("mask")}
LABEL_SUFFIXES = {"flow/facial": ".flo", "flow/head": ".flo", "mask": ".npy"}

#: Flow magnitude (per component) at or above which a pixel is invalid, as in the reference.
VALID_FLOW_LIMIT = 1000.0

EXPECTED_LAYOUT = """\
expected FacialFlowNet layout:
  {root}/image/facial/{split}/<emotion>/<subject>/*.jpg   (n frames)
  {root}/flow/facial/{split}/<emotion>/<subject>/*.flo    (n-1 flows, stems of frames 1..n-1)
  {root}/flow/head/{split}/<emotion>/<subject>/*.flo      (n-1 flows, stems of frames 1..n-1)
  {root}/mask/{split}/<emotion>/<subject>/*.npy           (n-1 or n masks, stems of the frames)"""


class SampleInfo(NamedTuple):
    """Where a pair comes from: emotion folder, subject folder, 0-based pair index in the sequence."""

    emotion: str
    subject: str
    frame: int


class _Sequence(NamedTuple):
    frames: list[Path]
    flows_facial: list[Path]
    flows_head: list[Path]
    masks: list[Path]
    renamed: list[tuple[Path, str]]  # (a label file, its frame) per folder paired by sorted order


def _list_files(folder: Path, suffix: str) -> list[Path]:
    """Sorted files with this suffix (any case), hidden files (e.g. macOS `._*`) excluded."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == suffix and not p.name.startswith(".")
    )


def _list_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


class _Pairing(NamedTuple):
    """Label files of one folder in pair order; `renamed` gives an example (file, frame stem)
    when they were paired by sorted order because no file is named after a frame."""

    files: list[Path]
    renamed: tuple[str, str] | None


def _label_mismatch(sequence: Path, folder: Path, suffix: str, frames: int, problems: list[str]) -> UserError:
    return UserError(
        f"sequence {sequence}: {suffix} files in {folder} do not match its {frames} frames ({'; '.join(problems)})"
    )


def _match_labels(
    sequence: Path, folder: Path, files: list[Path], frame_stems: list[str], suffix: str, allow_one_more: bool
) -> _Pairing:
    """Pair `files` with frames 1..n-1 of a sequence whose frames have `frame_stems` (n stems).

    When any file is named after a frame, every file must be: each of frames 1..n-1 needs
    its file and no other name is allowed (except the last frame's when `allow_one_more`),
    otherwise a UserError names the sequence and the missing or stray files. When no file
    is named after a frame (another naming scheme), files pair by sorted order as in the
    reference, after checking their count (n-1, or n when `allow_one_more`).
    """
    stems = frame_stems[:-1]
    by_stem: dict[str, Path] = {}
    for path in files:
        if path.stem in by_stem:
            raise _label_mismatch(
                sequence,
                folder,
                suffix,
                len(frame_stems),
                [f"{by_stem[path.stem].name} and {path.name} both name frame {path.stem}"],
            )
        by_stem[path.stem] = path
    allowed = set(frame_stems) if allow_one_more else set(stems)
    if any(stem in frame_stems for stem in by_stem):
        missing = [stem + suffix for stem in stems if stem not in by_stem]
        stray = [path.name for path in files if path.stem not in allowed]
        if missing or stray:
            problems = [f"found {len(files)}"]
            if missing:
                problems.append(f"missing {', '.join(missing)}")
            if stray:
                problems.append(f"unexpected {', '.join(stray)} (no pair starts at a frame of that name)")
            raise _label_mismatch(sequence, folder, suffix, len(frame_stems), problems)
        return _Pairing([by_stem[stem] for stem in stems], None)
    counts = (len(stems), len(stems) + 1) if allow_one_more else (len(stems),)
    if len(files) not in counts:
        raise _label_mismatch(
            sequence,
            folder,
            suffix,
            len(frame_stems),
            [f"expected {' or '.join(map(str, counts))}, found {len(files)}; none is named after a frame"],
        )
    return _Pairing(files[: len(stems)], (files[0].name, stems[0]))


def split_folder(root: str | os.PathLike, split: str) -> Path:
    """The frame folder of `split` (train, val or test) in the FacialFlowNet folder `root`."""
    return Path(root) / "image" / "facial" / split


def split_problem(root: str | os.PathLike, split: str) -> str | None:
    """Why `split` of the FacialFlowNet folder `root` cannot be read, in one line: the folder
    or the split's frame folder is missing (None: both are there; FacialFlow checks the rest)."""
    if not Path(root).is_dir():
        return f"dataset folder {root} not found (pass the FacialFlowNet folder with --root)"
    if not split_folder(root, split).is_dir():
        return f"split '{split}' not found: {split_folder(root, split)} does not exist"
    return None


class FacialFlow(data.Dataset):
    """FacialFlowNet pairs ``(img1, img2, flow_facial, flow_head, valid_facial, valid_head, mask)``.

    Tensors: images ``[3, H, W]`` float 0..255 RGB, flows ``[2, H, W]`` float32 (x first),
    valid ``[H, W]`` float (1 where both components of that flow are below 1000 in
    magnitude), mask ``[H, W]`` float 0/1 (see :func:`binary_mask`). Ground-truth pixels
    with a NaN or inf component are invalid and set to 0 in both components
    (:func:`nonfinite_ground_truth` finds them).

    Args:
        aug_params: keyword arguments of :class:`FacialFlowAugmentor`, or ``None`` for
            no augmentation (the tensors then equal the reference's).
        split: ``train``, ``val`` or ``test``.
        dataset_root: the ``FacialFlowNet`` folder.

    Attributes:
        image_list: ``[frame_i, frame_i+1]`` paths per pair.
        flow_facial_list, flow_head_list, mask_list: per-pair label paths.
        extra_info: :class:`SampleInfo` per pair (emotion, subject, pair index).
    """

    def __init__(
        self,
        aug_params: dict[str, Any] | None = None,
        split: str = "train",
        dataset_root: str | os.PathLike = DATASET_ROOT,
    ) -> None:
        self.augmentor = FacialFlowAugmentor(**aug_params) if aug_params is not None else None
        self.root = Path(dataset_root)
        self.split = split
        self.image_list: list[list[Path]] = []
        self.flow_facial_list: list[Path] = []
        self.flow_head_list: list[Path] = []
        self.mask_list: list[Path] = []
        self.extra_info: list[SampleInfo] = []

        self.image_root = image_root = split_folder(self.root, split)
        layout = EXPECTED_LAYOUT.format(root=self.root, split=split)
        if not image_root.is_dir():
            raise UserError(f"split folder {image_root} does not exist\n{layout}")
        renamed: list[tuple[Path, str]] = []
        for emotion in _list_dirs(image_root):
            for subject in _list_dirs(image_root / emotion):
                seq = self._scan_sequence(emotion, subject)
                renamed.extend(seq.renamed)
                for i in range(len(seq.frames) - 1):
                    self.image_list.append([seq.frames[i], seq.frames[i + 1]])
                    self.flow_facial_list.append(seq.flows_facial[i])
                    self.flow_head_list.append(seq.flows_head[i])
                    self.mask_list.append(seq.masks[i])
                    self.extra_info.append(SampleInfo(emotion, subject, i))
        self._check_no_orphan_sequences()
        if not self.image_list:
            raise UserError(f"split folder {image_root} contains no <emotion>/<subject> sequences\n{layout}")
        if renamed:
            logger.warning(
                "split %s of %s: %d label folders name no file after a frame (e.g. %s for frame %s); "
                "their files are paired with the frames by sorted order",
                split,
                self.root,
                len(renamed),
                *renamed[0],
            )

    def _label_dirs(self, emotion: str, subject: str) -> dict[str, Path]:
        return {name: self.root / folder / self.split / emotion / subject for name, folder in LABEL_FOLDERS.items()}

    def _scan_sequence(self, emotion: str, subject: str) -> _Sequence:
        """List and verify the frames, flows and masks of one sequence."""
        seq_dir = self.image_root / emotion / subject
        frames = _list_files(seq_dir, ".jpg")
        if len(frames) < 2:
            raise UserError(f"sequence {seq_dir}: needs at least 2 .jpg frames, found {len(frames)}")
        dirs = self._label_dirs(emotion, subject)
        for name, folder in dirs.items():
            if not folder.is_dir():
                raise UserError(f"sequence {seq_dir}: {name} folder {folder} is missing")
        stems = [p.stem for p in frames]
        pairings = {
            name: _match_labels(
                seq_dir,
                folder,
                _list_files(folder, LABEL_SUFFIXES[name]),
                stems,
                LABEL_SUFFIXES[name],
                allow_one_more=name == "mask",
            )
            for name, folder in dirs.items()
        }
        renamed = [
            (dirs[name] / pairing.renamed[0], pairing.renamed[1])
            for name, pairing in pairings.items()
            if pairing.renamed
        ]
        return _Sequence(
            frames, pairings["flow/facial"].files, pairings["flow/head"].files, pairings["mask"].files, renamed
        )

    def _check_no_orphan_sequences(self) -> None:
        """Raise if a label folder has a sequence without frames (e.g. a deleted image folder)."""
        image_root = self.image_root
        for label_root in (self.root / folder / self.split for folder in LABEL_FOLDERS.values()):
            if not label_root.is_dir():
                continue
            for emotion in _list_dirs(label_root):
                for subject in _list_dirs(label_root / emotion):
                    if not (image_root / emotion / subject).is_dir():
                        raise UserError(
                            f"sequence {label_root / emotion / subject} has labels but no frame folder "
                            f"{image_root / emotion / subject}"
                        )

    def __len__(self) -> int:
        return len(self.image_list)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Read the raw arrays of pair ``index`` and check that their shapes agree."""
        img1 = flow_io.read_image(self.image_list[index][0])
        img2 = flow_io.read_image(self.image_list[index][1])
        flow_facial = flow_io.read_flo(self.flow_facial_list[index])
        flow_head = flow_io.read_flo(self.flow_head_list[index])
        mask = flow_io.read_npy(self.mask_list[index])
        shape = img1.shape[:2]
        for path, arr in (
            (self.image_list[index][1], img2),
            (self.flow_facial_list[index], flow_facial),
            (self.flow_head_list[index], flow_head),
            (self.mask_list[index], mask),
        ):
            if arr.shape[:2] != shape or (arr is mask and mask.ndim != 2):
                raise UserError(
                    f"{path}: shape {arr.shape} does not match frame {self.image_list[index][0]} "
                    f"of size {shape[0]}x{shape[1]}"
                )
        return img1, img2, flow_facial, flow_head, binary_mask(mask, self.mask_list[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        img1, img2, flow_facial, flow_head, mask = self._load(index)
        if self.augmentor is not None:
            img1, img2, flow_facial, flow_head, mask = self.augmentor(img1, img2, flow_facial, flow_head, mask)

        img1_t = torch.from_numpy(img1).permute(2, 0, 1).float()
        img2_t = torch.from_numpy(img2).permute(2, 0, 1).float()
        flow_facial_t, valid_facial = _flow_and_valid(flow_facial)
        flow_head_t, valid_head = _flow_and_valid(flow_head)
        mask_t = torch.from_numpy(mask).float()
        return img1_t, img2_t, flow_facial_t, flow_head_t, valid_facial, valid_head, mask_t


def binary_mask(mask: np.ndarray, path: str | os.PathLike = "mask") -> np.ndarray:
    """A face mask as ``uint8`` 0/1: ``mask > 0.5`` for floats, ``mask != 0`` for integers and bools.

    The reference casts to uint8, which turns a soft mask of 0.99 or a 16-bit 256 into 0.
    Other dtypes raise a UserError naming `path`.
    """
    if mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer):
        return (mask != 0).astype(np.uint8)
    if np.issubdtype(mask.dtype, np.floating):
        return (mask > 0.5).astype(np.uint8)
    raise UserError(f"{path}: mask dtype {mask.dtype} is not bool, integer or float")


def _flow_and_valid(flow: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """`[H, W, 2]` flow -> (`[2, H, W]` float tensor, `[H, W]` validity: both components
    below VALID_FLOW_LIMIT)."""
    flow_t = torch.from_numpy(flow).permute(2, 0, 1).float()
    valid = (flow_t.abs() < VALID_FLOW_LIMIT).all(dim=0).float()
    # Non-finite pixels are invalid already; setting both components to 0 keeps 0 * NaN
    # out of losses and sums, and marks them for `nonfinite_ground_truth` (finite values
    # are left exactly as the reference has them).
    nonfinite = ~torch.isfinite(flow_t).all(dim=0)
    return flow_t.masked_fill(nonfinite, 0.0), valid


def nonfinite_ground_truth(flow: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Bool ``[..., H, W]``: pixels of a FacialFlow ground-truth flow ``[..., 2, H, W]`` whose
    file values were not finite (NaN or inf), or that are not finite in ``flow`` itself.

    FacialFlow marks such pixels invalid and sets both components to 0; no other invalid
    pixel is 0, since a finite pixel is invalid only when a component reaches
    VALID_FLOW_LIMIT in magnitude.
    """
    zeroed = (valid < 0.5) & (flow == 0).all(dim=-3)
    return zeroed | ~torch.isfinite(flow).all(dim=-3)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and ``random`` from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def default_num_workers() -> int:
    """Loader worker processes when none are asked for: one per CPU, at most 8."""
    return min(os.cpu_count() or 1, 8)


def training_dataset(stage: str, image_size: Sequence[int], *, batch_size: int, root: str | None = None) -> FacialFlow:
    """The augmented training split of ``stage`` (only ``"facialflow"``) with ``image_size``
    crops ``[H, W]``; an error unless it holds at least one full batch."""
    if stage != "facialflow":
        raise ValueError(f"unknown training stage {stage!r} (supported: 'facialflow')")
    aug_params = {"crop_size": list(image_size), "min_scale": -0.2, "max_scale": 0.6, "do_flip": True}
    root = root or DATASET_ROOT
    dataset = FacialFlow(aug_params, split="train", dataset_root=root)
    if len(dataset) < batch_size:
        raise UserError(
            f"{root}: {len(dataset)} training pairs, fewer than the batch size {batch_size} "
            "(batches are dropped when incomplete)"
        )
    logger.info("Training with %d image pairs from %s", len(dataset), root)
    return dataset
