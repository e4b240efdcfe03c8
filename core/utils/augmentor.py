"""Training augmentation for FacialFlowNet samples.

:class:`FacialFlowAugmentor` follows the reference ``FlowAugmentor`` (photometric
jitter, eraser, random rescale/stretch, flips, random crop) and applies the SAME
geometry to both flows (facial and head) and to the face mask. The reference leaves
the mask untouched, so its mask no longer matches the cropped images; here the mask
is resized with nearest neighbour, flipped and cropped like the images, so an
augmented sample stays self-consistent.

Randomness comes from ``numpy.random`` (geometry, eraser, jitter choice) and from
``torch`` (the torchvision ``ColorJitter`` parameters), as in the reference; seeding
both reproduces an augmentation exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image
from torchvision.transforms import ColorJitter

AugmentedSample = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
# Margin (px) the rescaled frame keeps around the crop; frames smaller than crop + margin are upscaled.
CROP_MARGIN = 8


class FacialFlowAugmentor:
    """Photometric and spatial augmentation of ``(img1, img2, flow_facial, flow_head, mask)``.

    Args:
        crop_size: output ``(height, width)``.
        min_scale, max_scale: range of the log2 rescale exponent.
        do_flip: enable horizontal (p=0.5) and vertical (p=0.1) flips.
        eraser_prob: probability of pasting 1-2 mean-colour boxes into image 2.
        asymmetric_color_prob: probability of jittering the two images independently.
        spatial_prob: probability of rescaling.

    The probabilities default to the reference values; tests turn the eraser off to
    check geometric consistency.
    """

    def __init__(
        self,
        crop_size: Sequence[int],
        min_scale: float = -0.2,
        max_scale: float = 0.6,
        do_flip: bool = True,
        eraser_prob: float = 0.5,
        asymmetric_color_prob: float = 0.2,
        spatial_prob: float = 0.8,
    ) -> None:
        if len(crop_size) != 2 or min(crop_size) <= 0:
            raise ValueError(f"crop_size must be (height, width) with positive sides, got {crop_size}")
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.spatial_prob = spatial_prob
        self.stretch_prob = 0.8
        self.max_stretch = 0.2
        self.do_flip = do_flip
        self.h_flip_prob = 0.5
        self.v_flip_prob = 0.1
        self.photo_aug = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.5 / 3.14)
        self.asymmetric_color_prob = asymmetric_color_prob
        self.eraser_prob = eraser_prob
        self.eraser_bounds = (50, 100)

    def color_transform(self, img1: np.ndarray, img2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Colour-jitter both images, independently with ``asymmetric_color_prob``, else jointly."""
        if np.random.rand() < self.asymmetric_color_prob:
            img1 = np.array(self.photo_aug(Image.fromarray(img1)), dtype=np.uint8)
            img2 = np.array(self.photo_aug(Image.fromarray(img2)), dtype=np.uint8)
        else:
            stack = np.concatenate([img1, img2], axis=0)
            stack = np.array(self.photo_aug(Image.fromarray(stack)), dtype=np.uint8)
            img1, img2 = np.split(stack, 2, axis=0)
        return img1, img2

    def eraser_transform(self, img2: np.ndarray) -> np.ndarray:
        """Paste 1-2 boxes of the mean colour of image 2 into image 2 (simulated occlusion)."""
        if np.random.rand() < self.eraser_prob:
            img2 = img2.copy()
            ht, wd = img2.shape[:2]
            mean_color = img2.reshape(-1, 3).mean(axis=0)
            for _ in range(np.random.randint(1, 3)):
                x0 = np.random.randint(0, wd)
                y0 = np.random.randint(0, ht)
                dx = np.random.randint(*self.eraser_bounds)
                dy = np.random.randint(*self.eraser_bounds)
                img2[y0 : y0 + dy, x0 : x0 + dx] = mean_color
        return img2

    def spatial_transform(
        self,
        img1: np.ndarray,
        img2: np.ndarray,
        flow_facial: np.ndarray,
        flow_head: np.ndarray,
        mask: np.ndarray,
    ) -> AugmentedSample:
        """Rescale (with stretch), flip and crop images, flows and mask with one geometry."""
        ht, wd = img1.shape[:2]
        crop_h, crop_w = self.crop_size
        min_scale = max((crop_h + CROP_MARGIN) / float(ht), (crop_w + CROP_MARGIN) / float(wd))

        scale = 2 ** np.random.uniform(self.min_scale, self.max_scale)
        scale_x = scale_y = scale
        if np.random.rand() < self.stretch_prob:
            scale_x *= 2 ** np.random.uniform(-self.max_stretch, self.max_stretch)
            scale_y *= 2 ** np.random.uniform(-self.max_stretch, self.max_stretch)
        scale_x = max(scale_x, min_scale)
        scale_y = max(scale_y, min_scale)

        # The reference crashes when an unscaled image is not larger than the crop;
        # here such images are always rescaled (to at least crop + 8).
        too_small = ht <= crop_h or wd <= crop_w
        if np.random.rand() < self.spatial_prob or too_small:

            def resize(a: np.ndarray, interp: int) -> np.ndarray:
                return cv2.resize(a, None, fx=scale_x, fy=scale_y, interpolation=interp)

            img1 = resize(img1, cv2.INTER_LINEAR)
            img2 = resize(img2, cv2.INTER_LINEAR)
            factors = np.array([scale_x, scale_y], dtype=np.float32)
            flow_facial = resize(flow_facial, cv2.INTER_LINEAR) * factors
            flow_head = resize(flow_head, cv2.INTER_LINEAR) * factors
            mask = resize(mask, cv2.INTER_NEAREST_EXACT)  # pixel-centre aligned, like the images

        if self.do_flip:
            if np.random.rand() < self.h_flip_prob:
                img1, img2, mask = img1[:, ::-1], img2[:, ::-1], mask[:, ::-1]
                flow_facial = flow_facial[:, ::-1] * np.array([-1.0, 1.0], dtype=np.float32)
                flow_head = flow_head[:, ::-1] * np.array([-1.0, 1.0], dtype=np.float32)
            if np.random.rand() < self.v_flip_prob:
                img1, img2, mask = img1[::-1], img2[::-1], mask[::-1]
                flow_facial = flow_facial[::-1] * np.array([1.0, -1.0], dtype=np.float32)
                flow_head = flow_head[::-1] * np.array([1.0, -1.0], dtype=np.float32)

        y0 = np.random.randint(0, img1.shape[0] - crop_h)
        x0 = np.random.randint(0, img1.shape[1] - crop_w)
        window = (slice(y0, y0 + crop_h), slice(x0, x0 + crop_w))
        return img1[window], img2[window], flow_facial[window], flow_head[window], mask[window]

    def __call__(
        self,
        img1: np.ndarray,
        img2: np.ndarray,
        flow_facial: np.ndarray,
        flow_head: np.ndarray,
        mask: np.ndarray,
    ) -> AugmentedSample:
        """Augment one sample.

        Args:
            img1, img2: ``uint8`` ``[H, W, 3]`` RGB frames.
            flow_facial, flow_head: float32 ``[H, W, 2]`` flows.
            mask: ``uint8`` ``[H, W]`` face mask.

        Returns:
            The five arrays, cropped to ``crop_size``, contiguous, same dtypes.
        """
        img1, img2 = self.color_transform(img1, img2)
        img2 = self.eraser_transform(img2)
        out = self.spatial_transform(img1, img2, flow_facial, flow_head, mask)
        img1, img2, flow_facial, flow_head, mask = (np.ascontiguousarray(a) for a in out)
        return (
            img1,
            img2,
            flow_facial.astype(np.float32, copy=False),
            flow_head.astype(np.float32, copy=False),
            mask,
        )
