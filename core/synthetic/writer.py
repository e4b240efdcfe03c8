"""Writing synthetic sequences into the FacialFlowNet layout."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from core.datasets import LABEL_FOLDERS
from core.synthetic.sequence import FACE_SCALE, FRAME_INTERVAL, SyntheticSequence, render_sequence
from core.utils import flow_io
from core.utils.atomic import atomic_path
from core.utils.progress import progress_bar

EMOTIONS = ("angry", "happy", "neutral", "sad", "surprise")
SPLITS = ("train", "val", "test")
JPEG_QUALITY = 95


def _split_seed(seed: int, split: str, subject: int) -> list[int]:
    return [seed, zlib.crc32(split.encode()), subject]


def subject_folder(subject: int) -> tuple[str, str]:
    """``(emotion, subject name)`` of the 0-based subject index within a split."""
    return EMOTIONS[subject % len(EMOTIONS)], f"subject{subject + 1:03d}"


def write_sequence(seq: SyntheticSequence, root: Path, split: str, emotion: str, subject: str) -> None:
    """Write one sequence into the FacialFlowNet layout under ``root``."""
    rel = Path(split) / emotion / subject
    folders = {"image/facial": Path("image", "facial"), "image/head": Path("image", "head"), **LABEL_FOLDERS}
    dirs = {name: root / folder / rel for name, folder in folders.items()}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    for i, (facial, head, mask) in enumerate(zip(seq.facial_frames, seq.head_frames, seq.masks)):
        stem = f"{i + 1:04d}"
        for key, image in (("image/facial", facial), ("image/head", head)):
            with atomic_path(dirs[key] / f"{stem}.jpg") as tmp:
                if not cv2.imwrite(str(tmp), image[:, :, ::-1], jpeg):
                    raise OSError(f"could not write {dirs[key] / f'{stem}.jpg'}")
        with atomic_path(dirs["mask"] / f"{stem}.npy") as tmp:
            np.save(tmp, mask)
        if i < len(seq.flows_facial):
            flow_io.write_flo(dirs["flow/facial"] / f"{stem}.flo", seq.flows_facial[i])
            flow_io.write_flo(dirs["flow/head"] / f"{stem}.flo", seq.flows_head[i])


def generate(
    root: str | Path,
    subjects: int,
    frames: int,
    size: tuple[int, int],
    seed: int = 0,
    splits: Sequence[str] = SPLITS,
    progress: bool = False,
    frame_interval: float = FRAME_INTERVAL,
    face_scale: float = FACE_SCALE,
) -> list[Path]:
    """Write a synthetic FacialFlowNet dataset; return the sequence folders (under ``image/facial``).

    Subject ``j`` of a split goes to emotion ``EMOTIONS[j % 5]`` and folder
    ``subject{j+1:03d}``; its content depends only on ``(seed, split, j)`` (and
    ``frame_interval``, the motion time between frames: see :data:`FRAME_INTERVAL`, and
    ``face_scale``, the face's size: see :data:`FACE_SCALE`).
    """
    if subjects < 1:
        raise ValueError(f"subjects must be at least 1, got {subjects}")
    root = Path(root)
    jobs = [(split, j) for split in splits for j in range(subjects)]
    written = []
    for split, j in progress_bar(jobs, desc="synthetic FacialFlowNet", unit="subject", disable=not progress):
        emotion, name = subject_folder(j)
        seq = render_sequence(tuple(size), frames, _split_seed(seed, split, j), emotion, frame_interval, face_scale)
        write_sequence(seq, root, split, emotion, name)
        written.append(root / "image" / "facial" / split / emotion / name)
    return written
