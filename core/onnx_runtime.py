"""Running an ONNX export of DecFlow (`python -m core.export`) through onnxruntime.

`OnnxFlowEstimator` is a `core.inference.Estimator`, as `FlowEstimator`: images of any size
in, the flows cropped to that size out. The file says how it was made in its metadata
(`METADATA`): the iterations it unrolls, the weights' SHA-256 and the size rule it accepts.
onnxruntime is optional: the rest of the project runs without it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:  # optional (requirements-export.txt): the scripts run without it, --onnx says what is missing
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
except ImportError:
    ort = None

from core.errors import UserError
from core.inference import COMPARED_FIELDS, Estimator
from core.network import DecFlowOutput
from core.utils.padder import MIN_IMAGE_SIDE, UPSAMPLE_FACTOR, image_size_problem

INPUT_NAMES = ("image1", "image2")  # float32 [B, 3, H, W], RGB 0..255
OUTPUT_NAMES = ("facial", "head", "expression")  # float32 [B, 2, H, W]
# Metadata keys of an export: the format marks a DecFlow export, the rest say what it computes.
FORMAT_KEY, FORMAT = "decflow.format", "1"
ITERS_KEY = "decflow.iters"
WEIGHTS_KEY = "decflow.weights_sha256"
SIZE_RULE_KEY = "decflow.size_rule"
CONFIG_KEY = "decflow.config"
# What onnxruntime raises for a file it cannot read as a model.
LOAD_ERRORS = () if ort is None else (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail)


@dataclass(frozen=True)
class SizeRule:
    """The image sides an export accepts: multiples of `multiple_of`, from `min_side` up to
    `max_side` px (None: no upper bound)."""

    multiple_of: int = UPSAMPLE_FACTOR
    min_side: int = MIN_IMAGE_SIDE
    max_side: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SizeRule:
        return cls(**json.loads(text))

    def problem(self, height: int, width: int) -> str | None:
        """What is wrong with sides `height` x `width` (None: nothing): `image_size_problem` with this rule's bounds."""
        return image_size_problem(
            height, width, multiple_of=self.multiple_of, min_side=self.min_side, max_side=self.max_side
        )


def session_options() -> ort.SessionOptions:
    """onnxruntime's options for an export: as many CPU threads as PyTorch uses here
    (torch.get_num_threads, which OMP_NUM_THREADS sets), and threads that sleep between runs
    instead of spinning (spinning threads slow whatever runs next on these cores, and were no
    faster; docs/export.md)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(path: str | os.PathLike, *, providers: list[str] | None = None) -> ort.InferenceSession:
    """An onnxruntime session of the DecFlow export at `path`; UserError naming the file if it
    is missing, not an ONNX model, or not a DecFlow export with this module's inputs and outputs."""
    path = Path(path)
    if ort is None:
        raise UserError(f"{path}: running an ONNX file needs onnxruntime (pip install -r requirements-export.txt)")
    if not path.is_file():
        raise UserError(f"ONNX file {path} not found")
    try:
        session = ort.InferenceSession(str(path), session_options(), providers=providers or ["CPUExecutionProvider"])
    except LOAD_ERRORS as error:
        reason = str(error).strip().splitlines()[0][:80]
        raise UserError(f"{path} is not an ONNX model onnxruntime can load ({reason})") from None
    inputs = tuple(node.name for node in session.get_inputs())
    outputs = tuple(node.name for node in session.get_outputs())
    if session.get_modelmeta().custom_metadata_map.get(FORMAT_KEY) != FORMAT:
        raise UserError(f"{path} is not a DecFlow export of python -m core.export (no {FORMAT_KEY} metadata)")
    if inputs != INPUT_NAMES or outputs != OUTPUT_NAMES:
        raise UserError(f"{path}: a DecFlow export maps {INPUT_NAMES} to {OUTPUT_NAMES}, not {inputs} -> {outputs}")
    return session


class OnnxFlowEstimator(Estimator):
    """An ONNX export of DecFlow in onnxruntime (an Estimator: pad, infer, crop as FlowEstimator).

    `iters`, when given, must be the export's (it unrolls a fixed number); `pad_mode` is
    InputPadder's. There is no warm start (`flow_init`) and no low-resolution output: the
    DecFlowOutput's `facial_low` and `head_low` are None. UserError (naming the file) for
    a file that is not such an export.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        iters: int | None = None,
        pad_mode: str = "exp",
        providers: list[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.session = open_session(self.path, providers=providers)
        metadata = self.session.get_modelmeta().custom_metadata_map
        exported_iters = int(metadata[ITERS_KEY])
        if iters is not None and iters != exported_iters:
            raise UserError(f"{self.path} was exported with {exported_iters} iterations; --iters {iters} differs")
        self.size_rule = SizeRule.from_json(metadata[SIZE_RULE_KEY])
        super().__init__(
            iters=exported_iters,
            pad_mode=pad_mode,
            divisor=self.size_rule.multiple_of,
            min_side=self.size_rule.min_side,
        )
        self.weights_sha256 = metadata[WEIGHTS_KEY]
        self.config = json.loads(metadata[CONFIG_KEY])

    def precision(self) -> str:
        return "float32 (onnxruntime)"

    def model_options(self) -> dict[str, Any]:
        """The file's architecture, and the whole correlation pyramid stored (never the memory-bounded correlation)."""
        return {**{name: self.config[name] for name in COMPARED_FIELDS}, "alternate_corr": False}

    def to_input(self, image: torch.Tensor) -> torch.Tensor:
        return image.float()

    def run(
        self,
        image1: torch.Tensor,
        image2: torch.Tensor,
        flow_init: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None,
    ) -> DecFlowOutput:
        if flow_init is not None:
            raise UserError(f"{self.path}: an ONNX export has no warm start (flow_init)")
        problem = self.size_rule.problem(*image1.shape[-2:])
        if problem:
            raise UserError(f"{self.path}: {problem}, got shape {tuple(image1.shape)} after padding")
        feed = {name: np.ascontiguousarray(image.cpu().numpy()) for name, image in zip(INPUT_NAMES, (image1, image2))}
        facial, head, expression = (torch.from_numpy(out) for out in self.session.run(None, feed))
        return DecFlowOutput(facial=facial, head=head, expression=expression, facial_low=None, head_low=None)
