"""The embedded default task: scikit-learn's bundled 8x8 digits, upsampled to RGB images."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from pipeline.data.arrays import ImageSet


def load(image_size: int) -> ImageSet:
    """All 1,797 digits as uint8 RGB images of `image_size` (bilinear upsampling)."""
    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]  # 0..16 -> 0..1
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    return ImageSet(
        images.permute(0, 2, 3, 1).numpy(),
        bunch.target.astype(np.int64),
        [str(c) for c in bunch.target_names],
    )
