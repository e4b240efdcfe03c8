"""Batches of consecutive items of one size, for the forward passes of evaluation and inference."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")


def batches_of_one_size(
    items: Iterable[Item], *, batch_size: int, size: Callable[[Item], Hashable]
) -> Iterator[list[Item]]:
    """Consecutive `items`, in order, in lists of at most `batch_size` that share one `size(item)`
    (e.g. an image shape): an item of another size starts a new list. A list is handed out as soon
    as it is full, so no more than `batch_size` items are held (`items` may be a stream)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch: list[Item] = []
    for item in items:
        if batch and size(item) != size(batch[0]):
            yield batch
            batch = []
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
