"""Prepared splits on disk: uint8 RGB images (N, H, W, 3), int64 labels, class names."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import PipelineError
from pipeline.io import atomic_path


@dataclass
class ImageSet:
    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(
                f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.classes)


def save_split(path: str | Path, data: ImageSet) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez_compressed(
            f,
            images=data.images,
            labels=data.labels.astype(np.int64),
            classes=np.array(json.dumps(data.classes)),
        )


def load_split(path: str | Path) -> ImageSet:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: prepared split not found (run the prepare stage first)")
    with np.load(path, allow_pickle=False) as z:
        return ImageSet(z["images"], z["labels"], json.loads(str(z["classes"])))


def random_split(n: int, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Seeded random split of range(n) into parts of `sizes`, the remainder as one last part."""
    if sum(sizes) > n:
        raise PipelineError(f"cannot split {n} samples into {sizes}: not enough samples")
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0, *sizes])
    return [order[a:b] for a, b in itertools.pairwise(bounds)] + [order[bounds[-1] :]]
