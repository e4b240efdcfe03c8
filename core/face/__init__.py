"""Faces in a user's footage, for `get_flow.py --face_crop`.

- `detect`: face detectors (OpenCV's Haar cascade, no download; or the user's YuNet ONNX file);
- `crop`: one fixed square crop per sequence, chosen from the detections across sampled frames,
  and its geometry (cropping frames, pasting flows back into the full frame).
"""
