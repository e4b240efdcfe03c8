"""Blocks of rows that bound the memory of one step (correlation volume, lookups, attention)."""

from __future__ import annotations

import torch


def row_blocks(total: int, *, row_elements: int, budget: int) -> list[slice]:
    """Slices over `total` rows of `row_elements` values each, about `budget` values per block;
    `[slice(None)]` when one block holds them all.

    Always one block while torch.export traces: an exported graph serves every input size, so
    it has no loop whose count depends on the size (its memory grows with the size instead).
    """
    if torch.compiler.is_exporting():
        return [slice(None)]
    rows = max(1, budget // row_elements)
    if rows >= total:
        return [slice(None)]
    return [slice(start, start + rows) for start in range(0, total, rows)]
