"""Facial, head and expression flow for an image pair, a folder of frames or a video.

    python get_flow.py                                   # the demo pair in assets/demo/
    python get_flow.py --image1 a.png --image2 b.png --output out/ --save_flo
    python get_flow.py --frames seq/ --warm_start --max_flow 8
    python get_flow.py --video clip.mp4 --stride 2 --max_frames 100

For every pair (frame i, frame i+1) it writes `<output>/<name>_flow.png`: the first
frame, then the facial, head and expression flow drawn with the Middlebury colour wheel
on ONE shared scale (the largest magnitude of the three flows, or `--max_flow`), and a
legend (colour wheel + the scale in pixels). `<name>` is the stem of the first frame
(`<video>_<frame index>` for videos). `--save_flo` adds `<name>_facial.flo`,
`<name>_head.flo` and `<name>_expression.flo`; videos also give `<video>_flow.mp4`.
Images of any size work (replicate padding, symmetric as the reference, and at least
128 px per side); grayscale and RGBA frames are converted to RGB. Frames are streamed:
only two are in memory at a time.
"""
from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from evaluate import UserError, add_model_arguments, load_model, precision_name, resolve_device, \
    resolve_mixed_precision

REPO = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = "checkpoints/decflow-facialflownet.pth"
DEMO_PAIR = (REPO / "assets" / "demo" / "frame1.jpg", REPO / "assets" / "demo" / "frame2.jpg")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}
DEFAULT_ITERS = 24  # the reference demo
PANEL_TITLES = ("input", "facial", "head", "expression")


# --------------------------------------------------------------------------- visualisation
def _put_text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float) -> None:
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def render_flow_panels(image: np.ndarray, facial: np.ndarray, head: np.ndarray, expression: np.ndarray, *,
                       max_flow: float | None = None, titles: tuple[str, ...] = PANEL_TITLES
                       ) -> tuple[np.ndarray, float]:
    """Side-by-side RGB image `image | facial | head | expression | legend`.

    `image`: uint8 `[H, W, 3]` RGB; flows: `[H, W, 2]` (x first). All three flows use one
    colour scale: `max_flow` px (default: their largest magnitude) is full saturation.
    Returns the canvas (uint8 RGB, even height and width so it can go into an MP4) and the
    scale used.
    """
    from core.utils.flow_viz import colour_wheel_legend, flow_to_image, shared_max_flow

    height, width = image.shape[:2]
    scale = shared_max_flow(facial, head, expression) if max_flow is None else float(max_flow)
    panels = [image] + [flow_to_image(flow, max_flow=scale) for flow in (facial, head, expression)]

    legend_width = int(np.clip(height * 0.6, 96, 200))
    wheel = colour_wheel_legend(min(legend_width - 16, max(height - 48, 32)))
    legend = np.full((height, legend_width, 3), 255, np.uint8)
    top = 4
    left = (legend_width - wheel.shape[1]) // 2
    legend[top:top + wheel.shape[0], left:left + wheel.shape[1]] = wheel
    font = 0.4 if legend_width < 140 else 0.5
    text_y = min(top + wheel.shape[0] + 16, height - 20)
    _put_text(legend, "rim = max flow", (6, text_y), font * 0.9)
    _put_text(legend, f"{scale:.3g} px", (6, min(text_y + 18, height - 4)), font)

    header = 22
    body = np.concatenate(panels + [legend], axis=1)
    canvas = np.full((height + header, body.shape[1], 3), 255, np.uint8)
    canvas[header:] = body
    for i, title in enumerate(titles):
        _put_text(canvas, title, (i * width + 6, 16), 0.5)
    _put_text(canvas, "legend", (len(panels) * width + 6, 16), 0.5)
    pad_h, pad_w = canvas.shape[0] % 2, canvas.shape[1] % 2
    if pad_h or pad_w:
        canvas = np.pad(canvas, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=255)
    return canvas, scale


def write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise UserError(f"cannot write {path}")


# --------------------------------------------------------------------------- frame sources
def natural_key(path: Path) -> list:
    """Sort key that puts frame2 before frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def read_rgb(path: Path, role: str) -> np.ndarray:
    from core.utils.frame_utils import read_image

    if not path.is_file():
        raise UserError(f"{role} {path} not found")
    try:
        return read_image(path)
    except (ValueError, OSError) as error:
        raise UserError(f"cannot read {role} {path}: {str(error).splitlines()[0]}") from None


@dataclass
class Frame:
    name: str  # output name of the pair that starts at this frame
    label: str  # for messages (file name, or video + index)
    rgb: np.ndarray


class ImageFiles:
    """Frames from a list of image files (a pair, or a sorted folder), read lazily unless given decoded."""

    def __init__(self, paths: list[Path], role: str = "frame", decoded: list[np.ndarray] | None = None) -> None:
        self.paths = paths
        self.role = role
        self.decoded = decoded  # images already read (and checked), in `paths` order
        self.pairs = len(paths) - 1
        self.fps = None
        self.video_name = None

    def __iter__(self) -> Iterator[Frame]:
        for i, path in enumerate(self.paths):
            role = f"image{i + 1}" if self.role == "pair" else self.role
            yield Frame(path.stem, str(path), self.decoded[i] if self.decoded else read_rgb(path, role))


class VideoFrames:
    """Frames decoded one at a time from a video file (every `stride`-th, at most `max_frames`)."""

    def __init__(self, path: Path, stride: int, max_frames: int | None) -> None:
        if not path.is_file():
            raise UserError(f"video {path} not found")
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise UserError(f"cannot open video {path} (not a video OpenCV can decode)")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = capture.get(cv2.CAP_PROP_FPS)
        readable, _ = capture.read()
        capture.release()
        if not readable:
            raise UserError(f"cannot open video {path} (OpenCV decodes no frame from it)")
        self.path, self.stride, self.max_frames = path, stride, max_frames
        used = -(-count // stride) if count > 0 else 0
        if max_frames is not None:
            used = min(used, max_frames)
        self.pairs = max(used - 1, 0) if count > 0 else None
        self.fps = fps / stride if fps and fps > 0 else 25.0 / stride
        self.video_name = path.stem

    def __iter__(self) -> Iterator[Frame]:
        capture = cv2.VideoCapture(str(self.path))
        try:
            index = used = 0
            while self.max_frames is None or used < self.max_frames:
                if index % self.stride:
                    if not capture.grab():
                        break
                    index += 1
                    continue
                ok, bgr = capture.read()
                if not ok:
                    break
                yield Frame(f"{self.path.stem}_{index:06d}", f"{self.path} frame {index}",
                            cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                index += 1
                used += 1
        finally:
            capture.release()


def select_source(args: argparse.Namespace):
    """The frame source the arguments ask for (UserError when they make no sense)."""
    chosen = [name for name, value in (("--image1/--image2", args.image1 or args.image2), ("--frames", args.frames),
                                       ("--video", args.video)) if value]
    if len(chosen) > 1:
        raise UserError(f"give only one input: {' and '.join(chosen)} were both given")
    if args.stride < 1:
        raise UserError(f"--stride must be >= 1, got {args.stride}")
    if args.max_frames is not None and args.max_frames < 2:
        raise UserError(f"--max_frames must be >= 2 (a pair needs two frames), got {args.max_frames}")
    if args.video:
        source = VideoFrames(Path(args.video), args.stride, args.max_frames)
        if source.pairs == 0:
            raise UserError(f"video {args.video} has fewer than 2 usable frames")
        return source
    if args.frames:
        folder = Path(args.frames)
        if not folder.is_dir():
            raise UserError(f"frames folder {folder} not found")
        paths = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                       key=natural_key)[::args.stride]
        if args.max_frames is not None:
            paths = paths[:args.max_frames]
        if len(paths) < 2:
            raise UserError(f"frames folder {folder} has {len(paths)} usable image(s) "
                            f"({', '.join(sorted(IMAGE_EXTENSIONS))}); a pair needs at least 2")
        return ImageFiles(paths)
    if bool(args.image1) != bool(args.image2):
        raise UserError("--image1 and --image2 go together: give both")
    if args.image1:
        paths = [Path(args.image1), Path(args.image2)]
    else:
        paths = list(DEMO_PAIR)
        if not all(p.is_file() for p in paths):
            raise UserError(f"demo pair {paths[0]} / {paths[1]} missing: pass --image1/--image2, --frames or --video")
    first, second = (read_rgb(path, role) for path, role in zip(paths, ("image1", "image2")))
    check_same_size(str(paths[0]), first, str(paths[1]), second)  # before the model loads
    return ImageFiles(paths, role="pair", decoded=[first, second])


def check_same_size(label1: str, rgb1: np.ndarray, label2: str, rgb2: np.ndarray) -> None:
    if rgb1.shape != rgb2.shape:
        raise UserError(f"{label1} ({rgb1.shape[0]}x{rgb1.shape[1]}) and {label2} ({rgb2.shape[0]}x{rgb2.shape[1]}) "
                        "differ in size; both images of a pair must have the same size")


# --------------------------------------------------------------------------- inference
class FlowRunner:
    """Pad (symmetric, >= 128 px), run DecFlow, unpad; keeps the low-res flows for warm starts."""

    def __init__(self, model: torch.nn.Module, device: torch.device, iters: int, warm_start: bool) -> None:
        self.model, self.device, self.iters, self.warm_start = model, device, iters, warm_start
        self.previous_low: tuple[torch.Tensor, torch.Tensor] | None = None

    def to_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(rgb).permute(2, 0, 1).float()[None].to(self.device)

    @torch.inference_mode()
    def __call__(self, rgb1: np.ndarray, rgb2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from core.network import MIN_IMAGE_SIDE
        from core.utils.padder import InputPadder

        image1, image2 = self.to_tensor(rgb1), self.to_tensor(rgb2)
        padder = InputPadder(image1.shape, mode="symmetric", min_side=MIN_IMAGE_SIDE)
        image1, image2 = padder.pad(image1, image2)
        flow_init = self.previous_low if self.warm_start else None
        output = self.model(image1, image2, iters=self.iters, flow_init=flow_init, test_mode=True)
        self.previous_low = (output.facial_low, output.head_low)  # each decoder from its own flow
        flows = [padder.unpad(f[0]).float().permute(1, 2, 0).cpu().numpy() for f in
                 (output.facial, output.head, output.expression)]
        return flows[0], flows[1], flows[2]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Estimate facial, head and expression flow with DecFlow and visualise it. "
                    "Without an input option it runs on the demo pair in assets/demo/.")
    parser.add_argument("--model", default=DEFAULT_CHECKPOINT, help=f"checkpoint (default {DEFAULT_CHECKPOINT})")
    inputs = parser.add_argument_group("inputs (one of)")
    inputs.add_argument("--image1", default=None, help="first image of a pair")
    inputs.add_argument("--image2", default=None, help="second image of a pair")
    inputs.add_argument("--frames", default=None, help="folder of frames, pairs (i, i+1) in natural sort order")
    inputs.add_argument("--video", default=None, help="video file (any format OpenCV decodes)")
    inputs.add_argument("--stride", type=int, default=1, help="use every N-th frame of a video/folder (default 1)")
    inputs.add_argument("--max_frames", type=int, default=None, help="use at most N frames of a video/folder")
    parser.add_argument("--iters", type=int, default=DEFAULT_ITERS,
                        help=f"refinement iterations (default {DEFAULT_ITERS}, as the reference demo)")
    parser.add_argument("--warm_start", action="store_true",
                        help="sequences: start each pair from the previous pair's low-resolution facial flow")
    parser.add_argument("--max_flow", type=float, default=None,
                        help="flow magnitude (px) of full colour saturation; fix it to compare frames of a sequence "
                             "(default: the largest magnitude of each pair)")
    parser.add_argument("--save_flo", action="store_true",
                        help="also write <name>_facial.flo, <name>_head.flo, <name>_expression.flo")
    parser.add_argument("--output", default="outputs", help="output folder (default outputs/)")
    add_model_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> list[Path]:
    """Run as the command line asks; returns the visualisation files written."""
    try:
        return run(args)
    except UserError as error:
        raise SystemExit(f"get_flow.py: error: {error}") from None


def run(args: argparse.Namespace) -> list[Path]:
    from core.utils.frame_utils import write_flo

    if args.iters < 1:
        raise UserError(f"--iters must be >= 1, got {args.iters}")
    if args.max_flow is not None and not (np.isfinite(args.max_flow) and args.max_flow > 0):
        raise UserError(f"--max_flow must be a positive number, got {args.max_flow}")
    source = select_source(args)
    device = resolve_device(args.device)
    mixed = resolve_mixed_precision(args.mixed_precision, device)
    hint = ""
    if os.path.normpath(args.model) == os.path.normpath(DEFAULT_CHECKPOINT):
        hint = (f"download the authors' released DecFlow weights (see checkpoints/README.md) to {DEFAULT_CHECKPOINT}, "
                "or pass another checkpoint with --model PATH")
    model = load_model(args, args.model, device, mixed, missing_hint=hint)
    runner = FlowRunner(model, device, args.iters, args.warm_start)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    frames: Iterator[Frame] = iter(source)
    bar = None
    if isinstance(source, VideoFrames) or (isinstance(source, ImageFiles) and source.role != "pair"):
        from tqdm import tqdm

        bar = tqdm(total=source.pairs, desc="flow", unit="pair", dynamic_ncols=True)
    writer = None
    video_path = output / f"{source.video_name}_flow.mp4" if source.video_name else None
    written: list[Path] = []
    try:
        previous = next(frames)
        for current in frames:
            check_same_size(previous.label, previous.rgb, current.label, current.rgb)
            facial, head, expression = runner(previous.rgb, current.rgb)
            canvas, _ = render_flow_panels(previous.rgb, facial, head, expression, max_flow=args.max_flow)
            path = output / f"{previous.name}_flow.png"
            write_png(path, canvas)
            written.append(path)
            if args.save_flo:
                for kind, flow in (("facial", facial), ("head", head), ("expression", expression)):
                    write_flo(output / f"{previous.name}_{kind}.flo", flow)
            if video_path is not None:
                if writer is None:
                    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), source.fps,
                                             (canvas.shape[1], canvas.shape[0]))
                    if not writer.isOpened():
                        raise UserError(f"cannot write {video_path} (OpenCV has no 'mp4v' encoder here)")
                writer.write(np.ascontiguousarray(canvas[..., ::-1]))
            if bar is not None:
                bar.update(1)
            previous = current
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.release()
    if not written:
        raise UserError("no pair to process: the input has fewer than 2 frames")
    details = f"{args.iters} iterations, {precision_name(mixed, device)} on {device}"
    if len(written) == 1:
        print(f"wrote {written[0]} ({details})")
    else:
        print(f"wrote {len(written)} visualisations to {output}/ ({details})")
    if writer is not None:
        print(f"wrote {video_path}")
    return written


if __name__ == "__main__":
    main(get_args_parser().parse_args())
