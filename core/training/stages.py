"""The paper's two training stages: which parts of DecFlow learn.

The semantic encoder (`dad_encoder`) and the fusion block (`res1`) never train, in
either stage (their BatchNorm statistics still update in training mode, as in the
reference).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

from torch import nn

from core.checkpoint import (
    RANDOM_INITIALISATION,
    SEMANTIC_SOURCE,
    init_semantic_encoder,
    load_checkpoint,
    read_description,
)

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


def initialise(
    model: nn.Module,
    stage: int,
    *,
    restore_ckpt: str | os.PathLike | None,
    semantic_weights: str | os.PathLike | None,
    log: Callable[[str], None],
    offline: bool = False,
) -> str:
    """A new run's weights. Stage 1: the ImageNet semantic encoder (`semantic_weights`, or
    torchvision's cache, or downloaded there unless `offline`, or a warning that it stays
    random), then the GMA checkpoint
    non-strictly. Stage 2: the stage-1 weights strictly. Each step is said through `log`.
    Returns where the semantic encoder's weights come from (`semantic_source`)."""
    semantic = RANDOM_INITIALISATION
    if stage == 1:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            semantic = init_semantic_encoder(model, semantic_weights, allow_download=not offline)
        for warning in caught:
            log(f"WARNING: {warning.message}")
        log(f"semantic encoder: {semantic}")
    if restore_ckpt is None:
        log("no --restore_ckpt: training from initialisation")
        return semantic
    report = load_checkpoint(model, restore_ckpt, strict=stage == 2, verbose=False)
    log(("stage 2 (strict): " if stage == 2 else "stage 1 (non-strict): ") + report.summary())
    return semantic_source(restore_ckpt) if "dad_encoder" in report.loaded else semantic


def semantic_source(weights: str | os.PathLike) -> str:
    """Where the semantic encoder of the weights file `weights` comes from: what its description
    says (e.g. the random encoder of an offline stage 1), else the file itself."""
    return (read_description(weights) or {}).get(SEMANTIC_SOURCE, str(weights))
