"""From uint8 image arrays to normalised tensors and batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    default_collate,
)

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


def translate(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`image` (H, W, C) moved `dy` pixels down and `dx` right; the border it uncovers is black."""
    h, w = image.shape[:2]
    out = np.zeros_like(image)
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


class _Images(Dataset):
    """Normalises lazily, so a large split (VTAB at 224) never sits in memory as float. With
    `shift`, each image moves by up to that many pixels each way, drawn from (`pass_seed`, its
    index): the same move whatever the processes or workers, and again on a resumed pass."""

    def __init__(self, data: ImageSet, shift: int = 0) -> None:
        self.data, self.shift, self.pass_seed = data, shift, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.data.images[i]
        if self.shift:
            rng = np.random.default_rng((self.pass_seed % 2**63, i))
            image = translate(image, *rng.integers(-self.shift, self.shift + 1, 2))
        return to_tensor(image[None])[0], int(self.data.labels[i])


class _Shard(Sampler[list[int]]):
    """One rank's contiguous slice of every batch; every rank draws the same batches."""

    def __init__(self, batches: BatchSampler, rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            n = len(batch)  # the last batch may be shorter: shares then differ by at most one
            yield batch[self.rank * n // self.world : (self.rank + 1) * n // self.world]


def _collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    # a rank's share of a last batch shorter than the world is empty; the rank still takes part
    if not batch:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return default_collate(batch)


def loader(
    data: ImageSet,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    shard: tuple[int, int] = (0, 1),
    shift: int = 0,
) -> DataLoader:
    """A DataLoader whose shuffling is seeded (`reseed` it per epoch to resume exactly), its
    images moved at random by up to `shift` pixels each way (0: as they are).

    With `shard=(rank, world)` it yields rank's slice of each batch of `batch_size`: every rank
    draws the same seeded order, so the slices of all ranks together are the one-process batches.
    """
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    dataset = _Images(data, shift)
    sampler = RandomSampler(dataset, generator=gen) if shuffle else SequentialSampler(dataset)
    batches = BatchSampler(sampler, batch_size, drop_last=False)
    return DataLoader(
        dataset,
        batch_sampler=_Shard(batches, *shard),
        generator=gen,
        collate_fn=_collate,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )


def reseed(batches: DataLoader, seed: int) -> None:
    """Seed the next pass of a shuffled `loader`: its order and its images' moves."""
    batches.generator.manual_seed(seed)
    batches.dataset.pass_seed = seed
