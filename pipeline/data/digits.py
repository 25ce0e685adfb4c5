"""The embedded default task: scikit-learn's bundled 8x8 digits, upsampled to RGB images."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from pipeline.data.arrays import ImageSet, upsample


def load(image_size: int) -> ImageSet:
    """All 1,797 digits as uint8 RGB images of `image_size` (bilinear upsampling)."""
    bunch = load_digits()
    return ImageSet(
        upsample(bunch.images / 16.0, image_size),  # counts 0..16 -> 0..1
        bunch.target.astype(np.int64),
        [str(c) for c in bunch.target_names],
    )
