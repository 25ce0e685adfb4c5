"""From uint8 image arrays to normalised tensors and batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.data.arrays import ImageSet

# Inception-style normalisation, as timm's ViT configs use: pixels map to [-1, 1].
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def to_tensor(
    images: np.ndarray, mean: Sequence[float] = MEAN, std: Sequence[float] = STD
) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float32 (N, 3, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


class _Images(Dataset):
    """Normalises lazily, so a large split (VTAB at 224) never sits in memory as float."""

    def __init__(self, data: ImageSet) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return to_tensor(self.data.images[i : i + 1])[0], int(self.data.labels[i])


def loader(
    data: ImageSet, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0
) -> DataLoader:
    """A DataLoader whose shuffling is seeded (re-seed `.generator` per epoch to resume exactly)."""
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        _Images(data),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=gen,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )
