"""Synthetic FacialFlowNet-format data with exact ground-truth flow.

Every subject is a procedural face texture (skin, eyes, brows, nose, mouth, hair)
defined in a *canonical* coordinate frame (pixels, origin at the face centre) over a
procedural background with shoulders. A frame ``t`` is rendered by inverse mapping:
an output pixel ``p`` maps to the deformed canonical point ``c' = H_t^-1(p)`` (``H_t``
is the head homography: rotation, scale, translation and mild perspective) and then
to the texture point ``c = G_t(c') = c' + F_t(c')``, where ``F_t`` is a smooth,
compactly supported expression field (mouth opening, smile/frown, brow raise, eye
closing). ``F_t`` is kept contractive (Lipschitz < 1), so ``G_t`` is invertible by
fixed-point iteration.

Ground truth (``p`` a pixel of frame ``i``):

* head layer (face and hair): facial flow ``H_{i+1}(G_{i+1}^-1(c)) - p`` (the same
  texture point in frame ``i+1``), head flow ``H_{i+1}(c') - p`` (head motion with
  the expression held);
* background: the background translation between the two frames, for both flows
  (zero for static backgrounds), so the expression flow (facial - head) is zero
  outside the head;
* ``image/head`` renders the sequence with the expression of frame 1 held
  (``G_0``) and the same background, so the head flow also maps ``image/head`` frame
  ``i`` onto frame ``i+1`` exactly;
* ``mask/.../0001.npy`` is the face (skin, features, not hair) of frame 1, as a
  boolean ``[H, W]`` array; one mask is written per frame (``n`` masks), the last
  one belongs to no pair.

Backward-warping frame ``i+1`` with the ground truth reproduces frame ``i`` on the
visible head pixels up to JPEG and interpolation error (see :func:`warp_error`).

Modules: :mod:`.texture` (face texture atlas, background), :mod:`.motion` (head homography,
expression field), :mod:`.sequence` (a subject rendered into frames and exact flows),
:mod:`.writer` (the FacialFlowNet layout), :mod:`.check` (warp error of the ground truth),
:mod:`.cli` (``python -m core.synthetic``).
"""

from core.synthetic.check import backward_warp, erode, verify, warp_error
from core.synthetic.cli import main
from core.synthetic.motion import (
    EMOTION_PEAKS,
    ExpressionField,
    HeadMotion,
    Oscillation,
    apply_homography,
    make_expression,
)
from core.synthetic.sequence import FACE_SCALE, FRAME_INTERVAL, SyntheticSequence, SyntheticSubject, render_sequence
from core.synthetic.texture import FaceLayout, FaceTexture, make_background, make_face_texture
from core.synthetic.writer import EMOTIONS, JPEG_QUALITY, SPLITS, generate, subject_folder, write_sequence

__all__ = [
    "apply_homography",
    "backward_warp",
    "EMOTION_PEAKS",
    "EMOTIONS",
    "erode",
    "ExpressionField",
    "FACE_SCALE",
    "FaceLayout",
    "FaceTexture",
    "FRAME_INTERVAL",
    "generate",
    "HeadMotion",
    "JPEG_QUALITY",
    "main",
    "make_background",
    "make_expression",
    "make_face_texture",
    "Oscillation",
    "render_sequence",
    "SPLITS",
    "subject_folder",
    "SyntheticSequence",
    "SyntheticSubject",
    "verify",
    "warp_error",
    "write_sequence",
]
