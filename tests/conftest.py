"""Shared fixtures: tiny real timm ViTs and tiny real image data (small sizes, no fakes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import models
from pipeline.data import ImageSet
from pipeline.data.glyphs import generate

TINY = {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def tiny_vit():
    def make(num_classes: int = 4, **overrides):
        return models.create("vit_tiny_patch16_224", {**TINY, **overrides}, num_classes)

    return make


@pytest.fixture(scope="session")
def glyph_data() -> ImageSet:
    """4 classes x 24 real glyph images at 16x16."""
    return generate(num_classes=4, samples_per_class=24, image_size=16, seed=0)


def images(n: int = 8, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size)
