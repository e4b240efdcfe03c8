"""FacialFlowNet dataset and training data loader.

Layout (``{split}`` is ``train``, ``val`` or ``test``)::

    <root>/image/facial/{split}/<emotion>/<subject>/0001.jpg ...   n frames
    <root>/flow/facial/{split}/<emotion>/<subject>/0001.flo ...    n-1 facial flows
    <root>/flow/head/{split}/<emotion>/<subject>/0001.flo ...      n-1 head flows
    <root>/mask/{split}/<emotion>/<subject>/0001.npy ...           n-1 or n masks

Pair ``i`` of a sequence is (frame ``i``, frame ``i+1``) in sorted order, as in the
reference; its facial flow, head flow and mask are the files with the stem of frame
``i`` (``0001.flo`` and ``0001.npy`` go with ``0001.jpg -> 0002.jpg``). A mask for the
last frame is allowed and unused. Unlike the reference, which pairs files by sorted
position only, every sequence is verified when the dataset is built: a missing
folder, a missing or extra flow/mask, or a count mismatch raises ``ValueError``
naming the sequence folder. ``image/head`` is not read (the reference does not use it
for training).
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

from core.utils import frame_utils
from core.utils.augmentor import FacialFlowAugmentor

logger = logging.getLogger(__name__)
# Label folders of a split, by name: <root>/<folder>/<split>/<emotion>/<subject>/
LABEL_FOLDERS = {"flow/facial": Path("flow", "facial"), "flow/head": Path("flow", "head"), "mask": Path("mask")}

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


def _list_files(folder: Path, suffix: str) -> list[Path]:
    """Sorted files with this suffix (any case), hidden files (e.g. macOS `._*`) excluded."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() == suffix and not p.name.startswith("."))


def _list_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _match_labels(sequence: Path, folder: Path, files: list[Path], stems: list[str], suffix: str,
                  allow_one_more: bool) -> list[Path]:
    """Pair `files` with the frames whose stems are `stems` (frames 1..n-1 of the sequence).

    The counts must agree (n-1 files; one more allowed when `allow_one_more`), otherwise a
    ValueError names the sequence and, where the names tell, what is missing or extra. With
    the right count, files pair by sorted order as in the reference; names that differ from
    the frames' only earn a warning, since the dataset may name its labels its own way.
    """
    by_stem = {p.stem: p for p in files}
    counts = (len(stems), len(stems) + 1) if allow_one_more else (len(stems),)
    if len(files) not in counts:
        problems = [f"expected {' or '.join(map(str, counts))}, found {len(files)}"]
        missing = [s + suffix for s in stems if s not in by_stem]
        extra = sorted(p.name for p in files if p.stem not in stems)
        if allow_one_more and len(files) == len(stems) + 1 and extra:
            extra = extra[:-1]
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        if extra:
            problems.append(f"unexpected {', '.join(extra)}")
        raise ValueError(f"sequence {sequence}: {suffix} files in {folder} do not match its "
                         f"{len(stems) + 1} frames ({'; '.join(problems)})")
    paired = files[: len(stems)]
    renamed = [(p.name, s) for p, s in zip(paired, stems) if p.stem != s]
    if renamed:
        logger.warning("sequence %s: %s files in %s are named unlike the frames (e.g. %s for frame %s); "
                       "pairing by sorted order", sequence, suffix, folder, *renamed[0])
    return paired


class FacialFlow(data.Dataset):
    """FacialFlowNet pairs ``(img1, img2, flow_facial, flow_head, valid_facial, valid_head, mask)``.

    Tensors: images ``[3, H, W]`` float 0..255 RGB, flows ``[2, H, W]`` float32 (x first),
    valid ``[H, W]`` float (1 where both components of that flow are below 1000 in
    magnitude), mask ``[H, W]`` float (the ``.npy`` mask cast to uint8, as the reference).

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
        dataset_root: str | os.PathLike = "datasets/FacialFlowNet",
    ) -> None:
        self.augmentor = FacialFlowAugmentor(**aug_params) if aug_params is not None else None
        self.root = Path(dataset_root)
        self.split = split
        self.image_list: list[list[Path]] = []
        self.flow_facial_list: list[Path] = []
        self.flow_head_list: list[Path] = []
        self.mask_list: list[Path] = []
        self.extra_info: list[SampleInfo] = []

        self.image_root = image_root = self.root / "image" / "facial" / split
        layout = EXPECTED_LAYOUT.format(root=self.root, split=split)
        if not image_root.is_dir():
            raise ValueError(f"split folder {image_root} does not exist\n{layout}")
        for emotion in _list_dirs(image_root):
            for subject in _list_dirs(image_root / emotion):
                seq = self._scan_sequence(emotion, subject)
                for i in range(len(seq.frames) - 1):
                    self.image_list.append([seq.frames[i], seq.frames[i + 1]])
                    self.flow_facial_list.append(seq.flows_facial[i])
                    self.flow_head_list.append(seq.flows_head[i])
                    self.mask_list.append(seq.masks[i])
                    self.extra_info.append(SampleInfo(emotion, subject, i))
        self._check_no_orphan_sequences()
        if not self.image_list:
            raise ValueError(f"split folder {image_root} contains no <emotion>/<subject> sequences\n{layout}")

    def _label_dirs(self, emotion: str, subject: str) -> dict[str, Path]:
        return {name: self.root / folder / self.split / emotion / subject for name, folder in LABEL_FOLDERS.items()}

    def _scan_sequence(self, emotion: str, subject: str) -> _Sequence:
        """List and verify the frames, flows and masks of one sequence."""
        seq_dir = self.image_root / emotion / subject
        frames = _list_files(seq_dir, ".jpg")
        if len(frames) < 2:
            raise ValueError(f"sequence {seq_dir}: needs at least 2 .jpg frames, found {len(frames)}")
        dirs = self._label_dirs(emotion, subject)
        for name, folder in dirs.items():
            if not folder.is_dir():
                raise ValueError(f"sequence {seq_dir}: {name} folder {folder} is missing")
        stems = [p.stem for p in frames[:-1]]
        return _Sequence(
            frames=frames,
            flows_facial=_match_labels(seq_dir, dirs["flow/facial"], _list_files(dirs["flow/facial"], ".flo"),
                                       stems, ".flo", allow_one_more=False),
            flows_head=_match_labels(seq_dir, dirs["flow/head"], _list_files(dirs["flow/head"], ".flo"),
                                     stems, ".flo", allow_one_more=False),
            masks=_match_labels(seq_dir, dirs["mask"], _list_files(dirs["mask"], ".npy"), stems, ".npy",
                                allow_one_more=True),
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
                        raise ValueError(
                            f"sequence {label_root / emotion / subject} has labels but no frame folder "
                            f"{image_root / emotion / subject}"
                        )

    def __len__(self) -> int:
        return len(self.image_list)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Read the raw arrays of pair ``index`` and check that their shapes agree."""
        img1 = frame_utils.read_image(self.image_list[index][0])
        img2 = frame_utils.read_image(self.image_list[index][1])
        flow_facial = frame_utils.read_flo(self.flow_facial_list[index])
        flow_head = frame_utils.read_flo(self.flow_head_list[index])
        mask = np.load(self.mask_list[index])
        shape = img1.shape[:2]
        for path, arr in (
            (self.image_list[index][1], img2),
            (self.flow_facial_list[index], flow_facial),
            (self.flow_head_list[index], flow_head),
            (self.mask_list[index], mask),
        ):
            if arr.shape[:2] != shape or (arr is mask and mask.ndim != 2):
                raise ValueError(
                    f"{path}: shape {arr.shape} does not match frame {self.image_list[index][0]} "
                    f"of size {shape[0]}x{shape[1]}"
                )
        return img1, img2, flow_facial, flow_head, mask.astype(np.uint8)

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


def _flow_and_valid(flow: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """`[H, W, 2]` flow -> (`[2, H, W]` float tensor, `[H, W]` validity: both components
    below VALID_FLOW_LIMIT)."""
    flow_t = torch.from_numpy(flow).permute(2, 0, 1).float()
    valid = (flow_t.abs() < VALID_FLOW_LIMIT).all(dim=0).float()
    # Non-finite values are invalid pixels already; zeroing them keeps 0 * NaN out of
    # losses and whole-image sums (finite values are left exactly as the reference has them).
    return torch.nan_to_num(flow_t, nan=0.0, posinf=0.0, neginf=0.0), valid


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and ``random`` from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def default_num_workers() -> int:
    """Loader worker processes when none are asked for: one per CPU, at most 8."""
    return min(os.cpu_count() or 1, 8)


def training_dataset(stage: str, image_size: Sequence[int], *, batch_size: int,
                     root: str | None = None) -> FacialFlow:
    """The augmented training split of ``stage`` (only ``"facialflow"``) with ``image_size``
    crops ``[H, W]``; an error unless it holds at least one full batch."""
    if stage != "facialflow":
        raise ValueError(f"unknown training stage {stage!r} (supported: 'facialflow')")
    aug_params = {"crop_size": list(image_size), "min_scale": -0.2, "max_scale": 0.6, "do_flip": True}
    root = root or "datasets/FacialFlowNet"
    dataset = FacialFlow(aug_params, split="train", dataset_root=root)
    if len(dataset) < batch_size:
        raise ValueError(
            f"{root}: {len(dataset)} training pairs, fewer than the batch size {batch_size} "
            "(batches are dropped when incomplete)"
        )
    logger.info("Training with %d image pairs from %s", len(dataset), root)
    return dataset


def fetch_dataloader(args: Any) -> data.DataLoader:
    """Build the training loader for ``args.stage``.

    Reads ``args.stage`` (only ``"facialflow"``), ``args.image_size`` (crop ``[H, W]``),
    ``args.batch_size`` and, when present, ``args.root`` (default
    ``datasets/FacialFlowNet``), ``args.num_workers`` (default ``min(cpu_count, 8)``)
    and ``args.distributed`` (use a ``DistributedSampler``; the process group must be
    initialised and the caller should call ``loader.sampler.set_epoch``).
    """
    dataset = training_dataset(args.stage, args.image_size, batch_size=args.batch_size,
                               root=getattr(args, "root", None))
    num_workers = getattr(args, "num_workers", None)
    if num_workers is None:
        num_workers = default_num_workers()
    sampler = (data.DistributedSampler(dataset, shuffle=True, seed=getattr(args, "seed", 0), drop_last=True)
               if getattr(args, "distributed", False) else None)
    loader = data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        persistent_workers=num_workers > 0,
        worker_init_fn=seed_worker,
    )
    return loader
