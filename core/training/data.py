"""The training data stream: resumable, seeded per sample, shared among processes."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image
from torch.utils import data

from core.datasets import seed_worker, training_dataset
from core.errors import UserError
from core.training.state import seed_everything
from core.utils.augmentor import CROP_MARGIN


def sample_seed(seed: int, epoch: int, slot: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, slot]).generate_state(1)[0])


class ResumableSampler(data.Sampler):
    """Endless, resumable stream of `(index, sample_seed)` for one process.

    Epoch e is a permutation of the dataset drawn from `(seed, e)`; process `rank` of
    `world_size` takes every world_size-th entry, truncated so every process gets the
    same whole number of batches (the reference drops incomplete batches). The stream
    starts at batch `start_batch`, so a resumed run sees exactly the samples the
    interrupted one would have seen next. Each sample carries a seed for its
    augmentation, a function of (seed, epoch, position) only.
    """

    def __init__(
        self, length: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1, start_batch: int = 0
    ) -> None:
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self.batches_per_epoch = (length // world_size) // batch_size
        if self.batches_per_epoch == 0:
            raise UserError(
                f"{length} training pairs are fewer than one batch of {batch_size} per process x {world_size} processes"
            )

    def __iter__(self):
        epoch, batch = divmod(self.start_batch, self.batches_per_epoch)
        per_epoch = self.batches_per_epoch * self.batch_size
        while True:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + 7919 * epoch))
            positions = range(self.rank, self.length, self.world_size)[:per_epoch]
            for position in list(positions)[batch * self.batch_size :]:
                yield int(order[position]), sample_seed(self.seed, epoch, position)
            epoch, batch = epoch + 1, 0

    def __len__(self) -> int:  # one epoch; the stream itself is endless
        return self.batches_per_epoch * self.batch_size


class SampleError(UserError):
    """A training sample that cannot be read (damaged or mismatched file, named in the message).

    A DataLoader worker's exception reaches the main process re-created from the worker's
    traceback text; this class takes its own message back out of it, so that the one line
    naming the file passes through intact.
    """

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class SeededSamples(data.Dataset):
    """Wraps a dataset: item `(index, seed)` is `dataset[index]` with torch, numpy and random seeded
    by `seed`, so an augmentation depends on the sample's place in the stream only (not on the
    worker, nor on earlier draws); the caller's random states are restored afterwards."""

    def __init__(self, dataset: data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        numpy_state, python_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                seed_everything(seed)
                return self.dataset[index]
        except (UserError, OSError) as error:  # e.g. a truncated .flo, a damaged JPEG, a bad mask, a missing file
            raise SampleError(str(error)) from None
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


def build_train_loader(
    *,
    stage: str,
    image_size: tuple[int, int],
    root: str,
    per_process_batch: int,
    seed: int,
    num_workers: int,
    rank: int,
    world_size: int,
    start_step: int,
) -> data.DataLoader:
    """The endless training loader of one process, starting at batch `start_step`."""
    dataset = training_dataset(stage, image_size, batch_size=per_process_batch, root=root)
    sampler = ResumableSampler(
        len(dataset), per_process_batch, seed=seed, rank=rank, world_size=world_size, start_batch=start_step
    )
    return data.DataLoader(
        SeededSamples(dataset),
        batch_size=per_process_batch,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        worker_init_fn=seed_worker,
        persistent_workers=num_workers > 0,
    )


def upscaling_note(loader: data.DataLoader, image_size: tuple[int, int]) -> str | None:
    """One line when the crop `image_size` [H, W] does not fit the training frames (first frame
    of the split) with the augmentor's margin, so that every sample is upscaled; else None."""
    first = loader.dataset.dataset.image_list[0][0]
    with Image.open(first) as image:
        width, height = image.size
    if image_size[0] + CROP_MARGIN <= height and image_size[1] + CROP_MARGIN <= width:
        return None
    factor = max((image_size[0] + CROP_MARGIN) / height, (image_size[1] + CROP_MARGIN) / width)
    return (
        f"warning: --image_size {image_size[0]} {image_size[1]} is larger than the training frames "
        f"({height}x{width}, e.g. {first}) less the crop margin of {CROP_MARGIN} px: every sample is "
        f"upscaled, by at least {factor:.2f}x"
    )
