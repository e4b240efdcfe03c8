"""The one way to get an estimator from a file: `build_estimator(EstimatorSpec(...))`.

    estimator = build_estimator(EstimatorSpec(weights=Path("checkpoints/decflow-facialflownet.pth")))
    out = estimator(image1, image2)  # core.inference.Estimator: any size in, DecFlowOutput out

A spec names PyTorch weights (run by `core.inference.FlowEstimator`) or an ONNX export of
`python -m core.export` (run by `core.onnx_runtime.OnnxFlowEstimator`, which needs
onnxruntime; without it only an ONNX spec fails, with a message saying what to install).
get_flow.py, evaluate.py, hubconf.py and the MER harness build theirs here; `core.cli`
makes a spec from command-line options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.defaults import DEMO_ITERS
from core.inference import Estimator, FlowEstimator, load_model, resolve_device
from core.network import DecFlow, DecFlowConfig
from core.onnx_runtime import OnnxFlowEstimator


@dataclass(frozen=True)
class EstimatorSpec:
    """What to run, and how. Give `weights` or `onnx`, not both; neither gives the untrained
    network (hubconf's `pretrained=False`).

    For PyTorch weights: `config` is the architecture (checked against the description that
    train.py wrote beside the file), `device` where it runs (None: cuda when available, else
    cpu), `amp_dtype` the autocast dtype (None: float32), `alternate_corr` the memory-bounded
    correlation, `sha256` the file's digest when the caller has it (it is then not hashed
    again). An ONNX export takes `iters` and `pad_mode` only: it runs float32 on the CPU.
    `iters` None: the export's for an ONNX file, else DEMO_ITERS (get_flow.py's default).
    """

    weights: Path | None = None
    onnx: Path | None = None
    config: DecFlowConfig = field(default_factory=DecFlowConfig)
    iters: int | None = None
    device: torch.device | str | None = None
    amp_dtype: torch.dtype | None = None
    alternate_corr: bool = False
    pad_mode: str = "symmetric"  # InputPadder's mode: "symmetric" (the reference demo) or "exp"
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.weights is not None and self.onnx is not None:
            raise ValueError(f"an EstimatorSpec runs weights or an ONNX file, not both: {self.weights}, {self.onnx}")


def build_estimator(spec: EstimatorSpec) -> Estimator:
    """The estimator `spec` describes, ready to run; UserError (one line, naming the file) for a
    file that is missing or does not fit (the architecture, the iterations of an export)."""
    if spec.onnx is not None:
        return OnnxFlowEstimator(spec.onnx, iters=spec.iters, pad_mode=spec.pad_mode)
    device = resolve_device() if spec.device is None else torch.device(spec.device)
    if spec.weights is None:
        model = DecFlow(spec.config).to(device).eval()
    else:
        model = load_model(spec.weights, config=spec.config, device=device, sha256=spec.sha256)
    return FlowEstimator(
        model,
        iters=DEMO_ITERS if spec.iters is None else spec.iters,
        device=device,
        amp_dtype=spec.amp_dtype,
        alternate_corr=spec.alternate_corr,
        pad_mode=spec.pad_mode,
    )
