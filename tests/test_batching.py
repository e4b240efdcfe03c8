"""core.utils.batching: consecutive items of one size, handed out as soon as a batch is full."""

from __future__ import annotations

import pytest

from core.utils.batching import batches_of_one_size


def test_batches_keep_order_split_on_size_and_cap_the_length() -> None:
    sizes = [8, 8, 8, 16, 8, 8, 16, 16]
    items = list(enumerate(sizes))
    batches = list(batches_of_one_size(items, batch_size=2, size=lambda item: item[1]))
    # by hand: [0 1] full, [2] cut by 16, [3] cut by 8, [4 5] full, [6 7] full
    assert [[index for index, _ in batch] for batch in batches] == [[0, 1], [2], [3], [4, 5], [6, 7]]


def test_a_full_batch_is_handed_out_before_the_next_item_is_read() -> None:
    read = []

    def stream():
        for index in range(5):
            read.append(index)
            yield index

    batches = batches_of_one_size(stream(), batch_size=2, size=lambda item: 0)
    assert next(batches) == [0, 1] and read == [0, 1]  # a stream of frames holds one batch, no more
    assert next(batches) == [2, 3] and read == [0, 1, 2, 3]
    assert next(batches) == [4] and list(batches) == []


def test_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        next(batches_of_one_size([1], batch_size=0, size=lambda item: 0))
