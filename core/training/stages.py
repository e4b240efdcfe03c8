"""The paper's two training stages: which parts of DecFlow learn.

The semantic encoder (`dad_encoder`) and the fusion block (`res1`) never train, in
either stage (their BatchNorm statistics still update in training mode, as in the
reference).
"""
from __future__ import annotations

from torch import nn

# Top-level modules that train, by stage.
TRAINABLE = {
    1: ("fnet", "cnet", "att", "update_block", "update_block_head", "change_dim"),  # from GMA
    2: ("update_block_head", "change_dim"),  # --frozen: the head decoder on a trained facial decoder
}


def set_trainable(model: nn.Module, stage: int) -> None:
    """Switch `requires_grad` of a DecFlow's modules to those of `stage` (1 or 2)."""
    if stage not in TRAINABLE:
        raise ValueError(f"stage must be one of {sorted(TRAINABLE)}, got {stage}")
    for name, module in model.named_children():
        module.requires_grad_(name in TRAINABLE[stage])
