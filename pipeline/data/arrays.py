"""Prepared splits on disk: uint8 RGB images (N, H, W, 3), int64 labels, class names."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

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


def upsample(gray: np.ndarray, image_size: int) -> np.ndarray:
    """Grey images (N, h, w) in [0, 1] -> uint8 RGB (N, image_size, image_size, 3), bilinear."""
    x = torch.from_numpy(gray.astype(np.float32))[:, None]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    rgb = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    return rgb.permute(0, 2, 3, 1).numpy()


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


def stratified_split(labels: np.ndarray, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Seeded split of range(len(labels)) into parts of exactly `sizes` and the remainder, each
    class spread over the parts in proportion (within one image of exact), with an image of
    every class in the first part where the rounding allows."""
    n = len(labels)
    if sum(sizes) > n:
        raise PipelineError(f"cannot split {n} samples into {sizes}: not enough samples")
    classes, counts = np.unique(labels, return_counts=True)
    table = allocate(counts, [*sizes, n - sum(sizes)])
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(table.shape[1])]
    for c, row in zip(classes, table, strict=True):
        index = rng.permutation(np.flatnonzero(labels == c))
        for part, (a, b) in zip(parts, itertools.pairwise(np.cumsum([0, *row])), strict=True):
            part.append(index[a:b])
    return [rng.permutation(np.concatenate(p)) for p in parts]


def allocate(counts: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Images per (class, part), rows summing to `counts` and columns to `sizes`, each cell the
    floor or the ceiling of its exact share counts[c] * sizes[p] / n (a controlled rounding:
    one always exists; found as a bipartite flow over the cells that may round up)."""
    counts, n = np.asarray(counts, np.int64), int(np.sum(counts))
    exact = np.outer(counts, sizes)  # n times each exact share: integer arithmetic, no ties lost
    table, remainder = exact // n, exact % n
    row_need = counts - table.sum(1)
    col_need = np.asarray(sizes) - table.sum(0)
    up = np.zeros(table.shape, bool)
    # greedy first: a class with no image in the first part (train) takes one there, then the
    # largest remainders; augmenting paths then place what the greedy pass could not
    cells = sorted(
        zip(*np.nonzero(remainder), strict=True),
        key=lambda cp: (not (cp[1] == 0 and table[cp] == 0), -remainder[cp]),
    )
    for c, p in cells:
        if row_need[c] and col_need[p]:
            up[c, p], row_need[c], col_need[p] = True, row_need[c] - 1, col_need[p] - 1
    for start in np.flatnonzero(row_need):
        for _ in range(row_need[start]):
            end = _augment(start, up, remainder > 0, col_need)
            col_need[end] -= 1
    return table + up


def _augment(start: int, up: np.ndarray, open_: np.ndarray, col_need: np.ndarray) -> int:
    """Round up one more cell of row `start`, moving other rows' round-ups along a shortest
    path to a part that still needs an image; returns that part."""
    came_to_col: dict[int, int] = {}  # part -> the row that takes it
    came_to_row = {start: -1}  # row -> the part it gives up
    frontier = [start]
    while frontier:
        nxt = []
        for r in frontier:
            for p in np.flatnonzero(open_[r] & ~up[r]):
                if p in came_to_col:
                    continue
                came_to_col[p] = r
                if col_need[p] > 0:  # walk back: each row on the path swaps one part
                    row, part = r, p
                    while True:
                        up[row, part] = True
                        if row == start:
                            return int(p)
                        part = came_to_row[row]
                        up[row, part] = False
                        row = came_to_col[part]
                for r2 in np.flatnonzero(up[:, p]):
                    if r2 not in came_to_row:
                        came_to_row[r2] = p
                        nxt.append(r2)
        frontier = nxt
    raise AssertionError("no controlled rounding: cannot happen for integer row and column sums")
