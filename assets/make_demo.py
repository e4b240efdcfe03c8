"""Regenerate the demo assets, from the repository root: python -m assets.make_demo

assets/demo/frame1.jpg, frame2.jpg: a synthetic pair from core.synthetic (subject seed 1,
"surprise", 256x256), the default input of get_flow.py.
assets/demo_gt_flow.png: its ground-truth facial, head and expression flow drawn by
core.utils.flow_viz.render_flow_panels (the visualisation get_flow.py writes for predictions).
"""

from __future__ import annotations

from pathlib import Path

import cv2

from core.synthetic import JPEG_QUALITY, render_sequence
from core.utils.flow_viz import render_flow_panels, write_png

ASSETS = Path(__file__).resolve().parent

SIZE, SEED, EMOTION = (256, 256), 1, "surprise"


def main() -> None:
    seq = render_sequence(SIZE, 2, SEED, EMOTION)
    demo = ASSETS / "demo"
    demo.mkdir(exist_ok=True)
    for i, frame in enumerate(seq.facial_frames[:2]):
        cv2.imwrite(str(demo / f"frame{i + 1}.jpg"), frame[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    facial, head = seq.flows_facial[0], seq.flows_head[0]
    canvas, scale = render_flow_panels(
        seq.facial_frames[0],
        facial,
        head,
        facial - head,
        titles=("frame 1", "facial (gt)", "head (gt)", "expression (gt)"),
    )
    write_png(ASSETS / "demo_gt_flow.png", canvas)
    print(f"wrote {demo}/frame1.jpg, frame2.jpg and {ASSETS / 'demo_gt_flow.png'} (scale {scale:.2f} px)")


if __name__ == "__main__":
    main()
