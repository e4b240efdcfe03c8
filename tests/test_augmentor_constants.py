"""The augmentor's defaults against the spec (shared/spec/DECFLOW.md, "Augmentation for
training"): the numbers are copied from the spec's text, not from the code."""

from __future__ import annotations

import pytest

from core.utils.augmentor import CROP_MARGIN, FacialFlowAugmentor


def test_defaults_are_the_specs() -> None:
    aug = FacialFlowAugmentor((128, 128))
    assert (aug.min_scale, aug.max_scale) == (-0.2, 0.6)  # scale exponent in [-0.2, 0.6]
    assert aug.do_flip and (aug.h_flip_prob, aug.v_flip_prob) == (0.5, 0.1)
    assert aug.eraser_prob == 0.5 and aug.eraser_bounds == (50, 100)  # 50-100 px boxes
    assert aug.asymmetric_color_prob == 0.2
    assert aug.spatial_prob == 0.8 and (aug.stretch_prob, aug.max_stretch) == (0.8, 0.2)
    assert CROP_MARGIN == 8  # never below crop + 8
    jitter = aug.photo_aug
    for name in ("brightness", "contrast", "saturation"):
        assert getattr(jitter, name) == pytest.approx((0.6, 1.4)), name  # 0.4 around 1
    assert jitter.hue == pytest.approx((-0.5 / 3.14, 0.5 / 3.14))
