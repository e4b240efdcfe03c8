"""torch.hub entry points.

    model = torch.hub.load("path/to/DecFlow", "decflow", source="local", pretrained=True)
    out = model(image1, image2, iters=12, test_mode=True)   # images [B,3,H,W], 0..255, H,W % 8 == 0, >= 128

`pretrained=True` loads the FacialFlowNet authors' release (registry name
`decflow-facialflownet`), downloaded and verified into torch.hub's cache
(`torch.hub.get_dir()/checkpoints`) on first use; `pretrained=False` gives the untrained
network. Either way the model is in eval mode.
"""

from __future__ import annotations

import torch

from core.checkpoint import load_checkpoint
from core.network import DecFlow
from core.weights import REGISTRY, RELEASE, ensure, offline_requested

dependencies = ["torch", "torchvision", "einops", "tqdm"]


def decflow(pretrained: bool = True, progress: bool = True) -> DecFlow:
    """DecFlow in the paper's configuration, in eval mode; with `pretrained`, the authors'
    released weights (downloaded unless DECFLOW_OFFLINE=1; loaded strictly, weights_only)."""
    model = DecFlow()
    if pretrained:
        path = ensure(
            REGISTRY[RELEASE],
            folder=f"{torch.hub.get_dir()}/checkpoints",
            offline=offline_requested(),
            progress=progress,
        )
        load_checkpoint(model, path, strict=True, verbose=False)
    return model.eval()
