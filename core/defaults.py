"""Defaults the scripts and core share, each written once here."""

from __future__ import annotations

# Where datasets/README.md puts FacialFlowNet (relative to the current folder).
DATASET_ROOT = "datasets/FacialFlowNet"

# Recurrent iterations: the reference's forward, training and evaluate.py use 12; its
# validation during training 32; its demo 24.
ITERS = 12
VAL_ITERS = 32
DEMO_ITERS = 24

# Training crop [H, W] (the reference's stage-2 size); get_flow's --face_size resizes face crops to its side.
TRAIN_IMAGE_SIZE = (480, 480)

# Weights, relative to the current folder (see checkpoints/README.md).
CHECKPOINTS_DIR = "checkpoints"  # where core.weights stores the authors' files
CHECKPOINTS_README = "checkpoints/README.md"
RELEASE_CHECKPOINT = "checkpoints/decflow-facialflownet.pth"  # the FacialFlowNet authors' release
SEED_CHECKPOINT = "checkpoints/decflow.pth"  # stage 2 of the README's seed training commands

# Exit status of every entry point for a usage or input error (argparse's).
USAGE_ERROR_STATUS = 2
