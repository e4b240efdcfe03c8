"""Export DecFlow to ONNX: one file for every image size of the size rule, at any batch.

    python -m core.export --model checkpoints/decflow-facialflownet.pth --iters 12 --output decflow.onnx

The file maps `image1`, `image2` (float32 `[B, 3, H, W]`, RGB 0..255, as `DecFlow.forward`
takes them) to `facial`, `head` and `expression` (float32 `[B, 2, H, W]`). It is the
test-mode `DecFlow.forward_unchecked` with `--iters` iterations unrolled and the whole correlation
pyramid stored, traced by torch.export with a symbolic batch, height and width (at
`--size`, batch 2), then translated by torch.onnx at opset 18. Its metadata records the
iterations, the weights' SHA-256, the architecture and the size rule (sides multiples of 8,
at least 128 px; at most 1280 px with relative-position attention).
`core.onnx_runtime.OnnxFlowEstimator` runs it (`get_flow.py --onnx FILE`).

At the end the export is checked: onnxruntime (CPU) against the eager float32 model, at
another size than the traced one; the worst differences are printed, and a file beyond
PARITY_TOLERANCE px is removed (error). See docs/export.md.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import onnx
import torch
from torch import nn
from torch.export import Dim

from core.cli import (
    AtLeastOne,
    DocstringHelpFormatter,
    UserError,
    add_model_arguments,
    add_weights_arguments,
    check_not_an_input,
    check_output,
    exit_on_error,
    exit_on_user_error,
    load_model_from_args,
    model_config,
    resolve_checkpoint,
)
from core.inference import FlowEstimator
from core.network import MAX_RELATIVE_POSITIONS, DecFlow, DecFlowConfig
from core.onnx_runtime import (
    CONFIG_KEY,
    FORMAT,
    FORMAT_KEY,
    INPUT_NAMES,
    ITERS_KEY,
    OUTPUT_NAMES,
    SIZE_RULE_KEY,
    WEIGHTS_KEY,
    OnnxFlowEstimator,
    SizeRule,
)
from core.utils.atomic import write_bytes_atomic
from core.utils.padder import UPSAMPLE_FACTOR
from core.weights import offline_requested, sha256_of

OPSET = 18  # ONNX opset of the file (onnxruntime >= 1.14 runs it)
TRACE_SIZE = (128, 160)  # default --size: small (quick to trace) and not square (height and width stay apart)
TRACE_BATCH = 2  # torch.export takes a size of 1 for a constant, so the batch is traced at 2
PARITY_SIZE = (128, 128)  # the closing check runs at another size than the traced one
PARITY_TOLERANCE = 1e-3  # px, worst |onnxruntime - eager| allowed for every output


class ExportedForward(nn.Module):
    """The graph of an export: test-mode `DecFlow.forward_unchecked`, `iters` iterations, the whole
    correlation pyramid stored, returning (facial, head, expression)."""

    def __init__(self, model: DecFlow, *, iters: int) -> None:
        super().__init__()
        self.model = model
        self.iters = iters

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # image1, image2: [B, 3, H, W] -> three [B, 2, H, W]
        out = self.model.forward_unchecked(image1, image2, iters=self.iters, test_mode=True, stored_from=0)
        return out.facial, out.head, out.expression


def size_rule(config: DecFlowConfig) -> SizeRule:
    """The sides an export of `config` accepts: those DecFlow accepts (relative-position tables
    cover MAX_RELATIVE_POSITIONS cells at 1/8 resolution)."""
    positions = config.position_only or config.position_and_content
    return SizeRule(max_side=UPSAMPLE_FACTOR * MAX_RELATIVE_POSITIONS if positions else None)


def dynamic_shapes(rule: SizeRule) -> dict[str, dict[int, object]]:
    """Symbolic batch and sides (multiples of 8 within `rule`) of both inputs."""
    cells = {"min": rule.min_side // UPSAMPLE_FACTOR}
    if rule.max_side is not None:
        cells["max"] = rule.max_side // UPSAMPLE_FACTOR
    batch, height, width = Dim("batch", min=1), Dim("height", **cells), Dim("width", **cells)
    sides = {0: batch, 2: UPSAMPLE_FACTOR * height, 3: UPSAMPLE_FACTOR * width}
    return {name: sides for name in INPUT_NAMES}


def export_model(model: DecFlow, *, iters: int, size: tuple[int, int], metadata: dict[str, str]) -> onnx.ModelProto:
    """`model` (CPU, eval) as an ONNX model with `metadata`, traced at `size` (H, W).

    torch.export itself (not torch.onnx's retries) traces, so that a value the trace would
    freeze at the traced size is an error here instead of a wrong result at other sizes."""
    # two distinct tensors: one tensor given twice would be traced as one input used twice
    example = tuple(torch.zeros(TRACE_BATCH, 3, *size) for _ in INPUT_NAMES)
    rule = SizeRule.from_json(metadata[SIZE_RULE_KEY])
    with torch.no_grad():
        program = torch.export.export(
            ExportedForward(model, iters=iters), example, dynamic_shapes=dynamic_shapes(rule), strict=False
        )
        onnx_program = torch.onnx.export(
            program, dynamo=True, opset_version=OPSET, input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES)
        )
    proto = onnx_program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto


def export_file(
    model: DecFlow, output: Path, *, iters: int, size: tuple[int, int], weights_sha256: str
) -> dict[str, str]:
    """Write the export of `model` to `output` (a temporary file, then renamed); its metadata."""
    metadata = {
        FORMAT_KEY: FORMAT,
        ITERS_KEY: str(iters),
        WEIGHTS_KEY: weights_sha256,
        SIZE_RULE_KEY: size_rule(model.config).to_json(),
        CONFIG_KEY: json.dumps(asdict(model.config), sort_keys=True),
    }
    proto = export_model(model, iters=iters, size=size, metadata=metadata)
    write_bytes_atomic(output, proto.SerializeToString())
    return metadata


def parity(
    model: DecFlow, path: Path, *, iters: int, size: tuple[int, int] = PARITY_SIZE, batch: int = 1
) -> dict[str, float]:
    """Worst |onnxruntime CPU - eager float32| (px) of each output on one seeded pair of `size`."""
    generator = torch.Generator().manual_seed(0)
    image1, image2 = (torch.rand(batch, 3, *size, generator=generator) * 255 for _ in range(2))
    eager = FlowEstimator(model, iters=iters, device="cpu", cuda_graphs=False)(image1, image2)
    exported = OnnxFlowEstimator(path, iters=iters)(image1, image2)
    return {name: float((getattr(eager, name) - getattr(exported, name)).abs().max()) for name in OUTPUT_NAMES}


# --------------------------------------------------------------------------- command line
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m core.export", description=__doc__, formatter_class=DocstringHelpFormatter
    )
    add_weights_arguments(parser)
    parser.add_argument("--iters", action=AtLeastOne, required=True, help="refinement iterations the file unrolls")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument(
        "--size", type=int, nargs=2, default=TRACE_SIZE, metavar=("H", "W"), help="image size of the trace"
    )
    add_model_arguments(parser)
    return parser


def check_args(args: argparse.Namespace) -> Path:
    """The output path; UserError for what cannot be exported."""
    for flag, given in (("--alternate_corr", args.alternate_corr), ("--mixed_precision", args.mixed_precision)):
        if given:
            raise UserError(f"{flag}: an export is float32 with the whole correlation pyramid stored")
    if args.amp_dtype is not None or args.device not in (None, "cpu"):
        raise UserError("--amp_dtype and --device do not apply: the export traces the float32 model on the CPU")
    output = check_output(args.output, "--output")
    if output.exists() and not args.overwrite:
        raise UserError(f"--output {output} already exists: pass --overwrite to replace it")
    rule = size_rule(model_config(args))
    problem = rule.problem(*args.size)
    if problem:
        raise UserError(f"--size {args.size[0]} {args.size[1]}: {problem}")
    return output


def main(args: argparse.Namespace) -> dict:
    """Export as the command line asks; returns the file, its metadata and the parity check."""
    with exit_on_user_error("core.export"):
        output = check_args(args)
        checkpoint = resolve_checkpoint(args.model, offline=offline_requested(args.offline))
        check_not_an_input(output, "--output", [("checkpoint", checkpoint)])
        model = load_model_from_args(args, checkpoint, torch.device("cpu"))
    started = time.perf_counter()
    metadata = export_file(model, output, iters=args.iters, size=tuple(args.size), weights_sha256=sha256_of(checkpoint))
    seconds = time.perf_counter() - started
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB, {args.iters} iterations, opset {OPSET}, ", end="")
    print(f"traced at {args.size[0]}x{args.size[1]} in {seconds:.0f} s)")
    worst = parity(model, output, iters=args.iters)
    line = ", ".join(f"{name} {value:.1e} px" for name, value in worst.items())
    print(f"parity at {PARITY_SIZE[0]}x{PARITY_SIZE[1]}, onnxruntime CPU vs eager float32: worst |diff| {line}")
    if max(worst.values()) > PARITY_TOLERANCE:
        output.unlink()
        raise SystemExit(f"core.export: error: the export differs by more than {PARITY_TOLERANCE} px; removed {output}")
    return {"output": output, "metadata": metadata, "parity": worst}


if __name__ == "__main__":
    exit_on_error(lambda: main(get_args_parser().parse_args()))
