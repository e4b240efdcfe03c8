"""Running a trained DecFlow on image pairs: padding, warm starts and, on CUDA, graphs.

`Estimator` pads a pair to what the network accepts, runs it and crops the flows back;
`FlowEstimator` runs a PyTorch model (`core.onnx_runtime.OnnxFlowEstimator` an ONNX export;
`core.estimators.build_estimator` makes either from a file). On CUDA `FlowEstimator`
replays the test-mode forward from CUDA graphs (`GraphedEstimate`): at batch 1 the
recurrence launches thousands of small kernels, and a graph launches them all at once.
Graphs give the same flow as the eager forward; anywhere else (CPU, autograd) the eager
forward runs.
"""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from core.checkpoint import description_path, load_checkpoint, read_description
from core.corr import corr_levels_stored_from
from core.errors import UserError
from core.network import DecFlow, DecFlowConfig, DecFlowOutput
from core.precision import parse_amp_dtype, precision_name, resolve_amp_dtype
from core.utils.padder import MIN_IMAGE_SIDE, UPSAMPLE_FACTOR, InputPadder, check_flow_init, check_inputs

# Graphs kept at once (each holds the memory of one forward); a sequence or an evaluation
# uses one, a padded sequence of mixed sizes a few.
MAX_GRAPHS = 2
# Eager runs before a capture: cuDNN and cuBLAS choose and load their kernels here.
WARMUP_RUNS = 2


def resolve_device(name: str | None = None) -> torch.device:
    """`name` as a torch.device (default: cuda when available, else cpu); UserError if unusable."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise UserError(f"invalid --device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available on this machine (use --device cpu)")
    return device


def resolve_inference_precision(
    mixed_precision: bool | None,
    amp_dtype: str | None,
    device: torch.device,
    *,
    warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> torch.dtype | None:
    """The autocast dtype of `--mixed_precision/--amp_dtype` on `device` (None: float32).

    Mixed precision is on by default for CUDA (as the reference) and off elsewhere; on a CPU
    without native bfloat16 it falls back to float32 with one line (`warn`).
    """
    mixed = device.type == "cuda" if mixed_precision is None else bool(mixed_precision)
    return resolve_amp_dtype(mixed, device, parse_amp_dtype(amp_dtype), warn=warn)


def load_model(
    checkpoint: str | os.PathLike, *, config: DecFlowConfig, device: torch.device, sha256: str | None = None
) -> DecFlow:
    """DecFlow of architecture `config` with the weights of `checkpoint` (strict), on `device`,
    in eval mode. UserError (one line) if the file is missing or does not fit. `sha256`: the
    file's digest when the caller has it already (it is then not hashed again)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    check_config(path, config)
    model = DecFlow(config)
    try:
        load_checkpoint(model, path, strict=True, verbose=False, sha256=sha256)
    except (FileNotFoundError, UserError) as error:
        raise UserError(str(error).replace("\n", " ")) from None
    return model.to(device).eval()


# Config fields that change what a network computes at inference (not dropout).
COMPARED_FIELDS = tuple(f.name for f in fields(DecFlowConfig) if f.metadata.get("inference", True))


def check_config(checkpoint: Path, config: DecFlowConfig) -> None:
    """UserError, naming both values, when the description that train.py wrote beside
    `checkpoint` gives another architecture than `config` (the attention modes share their
    weight keys, so strict loading alone cannot tell them apart)."""
    description = read_description(checkpoint)
    saved = (description or {}).get("config") or {}
    for name in COMPARED_FIELDS:
        if name in saved and saved[name] != getattr(config, name):
            raise UserError(
                f"{checkpoint} was trained with {name}={saved[name]} (see {description_path(checkpoint)}), "
                f"but the model options give {name}={getattr(config, name)}"
            )


class GraphedEstimate:
    """Test-mode `DecFlow.forward_unchecked` replayed from CUDA graphs.

    One graph per (input shape and dtype, iterations, precision, memory mode, warm start); the
    `MAX_GRAPHS` most recent are kept. Each call copies its inputs into the graph's static
    inputs, replays it and returns copies of its outputs. A graph reads the model's weights
    where they are: loading new values in place is fine, moving the model makes new graphs.
    """

    def __init__(self, model: DecFlow, *, max_graphs: int = MAX_GRAPHS) -> None:
        self.model = model
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], DecFlowOutput]] = OrderedDict()
        self.failed: set[tuple] = set()

    def _key(
        self,
        inputs: list[torch.Tensor],
        iters: int,
        shared_start: bool,
        amp_dtype: torch.dtype | None,
        alternate_corr: bool,
    ) -> tuple:
        first_weight = next(self.model.parameters())
        return (
            tuple((tuple(t.shape), t.dtype) for t in inputs),
            iters,
            shared_start,
            amp_dtype,
            alternate_corr,
            first_weight.device,
            first_weight.data_ptr(),
        )

    def __call__(
        self,
        image1: torch.Tensor,
        image2: torch.Tensor,
        *,
        iters: int,
        flow_init: tuple[torch.Tensor | None, torch.Tensor | None],
        amp_dtype: torch.dtype | None = None,
        alternate_corr: bool = False,
    ) -> DecFlowOutput:
        """Checked inputs (see `DecFlow.forward`) on a CUDA device -> the test-mode output."""
        shared_start = flow_init[0] is flow_init[1]
        inits = [init for init in (flow_init[:1] if shared_start else flow_init) if init is not None]
        inputs = [image1, image2, *inits]
        options = dict(amp_dtype=amp_dtype, alternate_corr=alternate_corr)
        key = self._key(inputs, iters, shared_start, **options)
        if key in self.failed:
            return self.model.forward_unchecked(
                image1, image2, iters=iters, flow_init=flow_init, test_mode=True, **options
            )
        if key not in self.graphs:
            try:
                self._capture(key, inputs, iters, flow_init, **options)
            except RuntimeError as error:  # e.g. an operation that cannot be captured: run eagerly from now on
                self.failed.add(key)
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                print(f"CUDA graph capture failed ({first_line}); running the eager forward instead", file=sys.stderr)
                return self.model.forward_unchecked(
                    image1, image2, iters=iters, flow_init=flow_init, test_mode=True, **options
                )
        self.graphs.move_to_end(key)
        graph, static_inputs, static_output = self.graphs[key]
        for static, given in zip(static_inputs, inputs):
            static.copy_(given)
        graph.replay()
        return DecFlowOutput(**{f.name: getattr(static_output, f.name).clone() for f in fields(DecFlowOutput)})

    def _capture(
        self,
        key: tuple,
        inputs: list[torch.Tensor],
        iters: int,
        flow_init: tuple[torch.Tensor | None, torch.Tensor | None],
        *,
        amp_dtype: torch.dtype | None,
        alternate_corr: bool,
    ) -> None:
        model, device = self.model, inputs[0].device
        while len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
        static_inputs = [t.clone() for t in inputs]
        static_images, static_inits = static_inputs[:2], iter(static_inputs[2:])
        if flow_init[0] is flow_init[1]:
            init = None if flow_init[0] is None else next(static_inits)
            static_flow_init = (init, init)
        else:
            static_flow_init = tuple(None if given is None else next(static_inits) for given in flow_init)
        batch, _, height, width = inputs[0].shape
        # decided here: the policy asks the driver for free memory, which a capture must not do
        pixels = (height // UPSAMPLE_FACTOR) * (width // UPSAMPLE_FACTOR)
        stored_from = corr_levels_stored_from(batch, pixels, device, amp_dtype=amp_dtype, alternate_corr=alternate_corr)

        def run() -> DecFlowOutput:
            return model.forward_unchecked(
                *static_images,
                iters=iters,
                flow_init=static_flow_init,
                test_mode=True,
                amp_dtype=amp_dtype,
                alternate_corr=alternate_corr,
                stored_from=stored_from,
            )

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_output = run()
        self.graphs[key] = (graph, static_inputs, static_output)


class Estimator(ABC):
    """What the scripts run on image pairs: `estimator(image1, image2, flow_init=None)`.

    Images `[3, H, W]` or `[B, 3, H, W]` RGB 0..255 of any size are checked, padded to what
    the network accepts (InputPadder's `pad_mode`: sides multiples of `divisor`, at least
    `min_side` px), run (`run`, the one part a subclass supplies with `to_input`) and the
    flows cropped back to the input size. `iters` is the refinement iterations it runs;
    `description()` says what it runs as result files record it.
    """

    def __init__(
        self, *, iters: int, pad_mode: str, divisor: int = UPSAMPLE_FACTOR, min_side: int = MIN_IMAGE_SIDE
    ) -> None:
        if iters < 1:
            raise UserError(f"iters must be >= 1, got {iters}")
        self.iters = iters
        self.pad_mode = pad_mode
        self.divisor = divisor
        self.min_side = min_side

    @abstractmethod
    def to_input(self, image: torch.Tensor) -> torch.Tensor:
        """`image` `[B, 3, H, W]` where and as `run` takes it (before padding)."""

    @abstractmethod
    def run(
        self,
        image1: torch.Tensor,
        image2: torch.Tensor,
        flow_init: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None,
    ) -> DecFlowOutput:
        """Padded, checked images `[B, 3, H', W']` -> the flows of the padded pair."""

    @abstractmethod
    def precision(self) -> str:
        """The arithmetic it runs in, in words (description's "precision")."""

    @abstractmethod
    def model_options(self) -> dict[str, Any]:
        """The architecture and correlation mode it runs (description's "model_options")."""

    def description(self) -> dict[str, Any]:
        """What this estimator runs, read from itself (not from the options asked for), as result
        files record it: iterations, padding, precision and the model options."""
        return {
            "iters": self.iters,
            "padding_mode": self.pad_mode,
            "precision": self.precision(),
            "model_options": self.model_options(),
        }

    def __call__(
        self,
        image1: torch.Tensor,
        image2: torch.Tensor,
        flow_init: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> DecFlowOutput:
        """Images `[3, H, W]` or `[B, 3, H, W]` RGB 0..255 (any size >= 1 px) -> the flows cropped
        to the input size, `[B, 2, H, W]`, and the decoders' final low-resolution flows of the
        padded pair, `[B, 2, H'/8, W'/8]` (a warm start's input; None where `run` gives none).
        `flow_init`: a previous result's `(facial_low, head_low)` for the same size, or None."""
        given = (tuple(image1.shape), tuple(image2.shape))  # the caller's shapes, for messages
        if given[0] != given[1]:
            raise UserError(f"image1 and image2 differ in shape: {given[0]} vs {given[1]}")
        if image1.dim() == 3:
            image1, image2 = image1[None], image2[None]
        if image1.dim() != 4 or image1.shape[1] != 3:
            raise UserError(f"images must be [3, H, W] or [B, 3, H, W] RGB, got shape {given[0]}")
        padder = InputPadder(image1.shape, mode=self.pad_mode, divisor=self.divisor, min_side=self.min_side)
        image1, image2 = padder.pad(self.to_input(image1), self.to_input(image2))
        check_inputs(image1, image2)
        output = self.run(image1, image2, flow_init)
        return DecFlowOutput(
            facial=padder.unpad(output.facial),
            head=padder.unpad(output.head),
            expression=padder.unpad(output.expression),
            facial_low=output.facial_low,
            head_low=output.head_low,
        )


class FlowEstimator(Estimator):
    """A DecFlow model on one device (an Estimator); optional warm start. The one way the
    scripts, the evaluation, training's validation and the benchmarks run a PyTorch model.

    The model must already be on `device` and in eval mode. `amp_dtype` autocasts
    (None: float32), `alternate_corr` is the memory-bounded mode (see `DecFlow.forward`).
    `pad_mode` is InputPadder's ("exp": bottom/right as the reference's FacialFlowNet
    evaluation; "symmetric"); pairs are padded to at least the network's minimum side.
    `cuda_graphs` (default: on for CUDA) replays the forward from CUDA graphs.
    """

    def __init__(
        self,
        model: DecFlow,
        *,
        iters: int,
        device: torch.device | str,
        amp_dtype: torch.dtype | None = None,
        alternate_corr: bool = False,
        pad_mode: str = "exp",
        cuda_graphs: bool | None = None,
    ) -> None:
        super().__init__(iters=iters, pad_mode=pad_mode)
        self.model = model
        self.device = torch.device(device)
        self.options = dict(amp_dtype=amp_dtype, alternate_corr=alternate_corr)
        use_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if use_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device, got {self.device}")
        self.graphed = GraphedEstimate(model) if use_graphs else None

    def precision(self) -> str:
        return precision_name(self.options["amp_dtype"])

    def model_options(self) -> dict[str, Any]:
        return {
            **{name: getattr(self.model.config, name) for name in COMPARED_FIELDS},
            "alternate_corr": self.options["alternate_corr"],
        }

    def to_input(self, image: torch.Tensor) -> torch.Tensor:
        return image.to(self.device)

    @torch.inference_mode()
    def run(
        self,
        image1: torch.Tensor,
        image2: torch.Tensor,
        flow_init: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None,
    ) -> DecFlowOutput:
        inits = check_flow_init(flow_init, image1.shape)
        if self.graphed is not None:
            return self.graphed(image1, image2, iters=self.iters, flow_init=inits, **self.options)
        return self.model.forward_unchecked(
            image1, image2, iters=self.iters, flow_init=inits, test_mode=True, **self.options
        )
