"""Glyphs: the project-made source dataset the default backbones are pre-trained on.

Each class is a fixed random "character" (a seeded template) of one or two pen strokes, each a
chain of quadratic Bézier curves. Each sample draws it with a random affine transform (rotation,
shear, scale, shift), control-point jitter and pen width. The images are made the way the UCI
digits were: a binary bitmap of 4·`grid` pixels counted in 4×4 blocks into a `grid`×`grid`
image of 0..16, then upsampled bilinearly to `image_size` as `digits` does. So the backbones see
the default task's imaging (its blur, its 17 grey levels) without ever seeing a digit, and
adaptation still has the shapes of digits to learn. Fully offline and deterministic per seed.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from pipeline.data.arrays import ImageSet, upsample

_BLOCK = 4  # bitmap pixels per side of a counted block, as the UCI digits
_POINTS = 8  # points along each Bézier piece


def _templates(num_classes: int, rng: np.random.Generator) -> list[list[np.ndarray]]:
    """Per class, its strokes: arrays (2n + 1, 2) of n chained quadratic pieces' control points
    in the unit box, taller than wide like handwriting."""
    out = []
    for _ in range(num_classes):
        strokes = []
        for _stroke in range(rng.integers(1, 3)):
            k = 2 * rng.integers(1, 4) + 1
            strokes.append(np.stack([rng.uniform(0.1, 0.9, k), rng.uniform(0.02, 0.98, k)], -1))
        out.append(strokes)
    return out


def _segments(ctrl: np.ndarray) -> np.ndarray:
    """Control points (N, 2n + 1, 2) -> the curves as line segments (N, n·(_POINTS - 1), 2, 2)."""
    t = np.linspace(0, 1, _POINTS)[:, None]
    pieces = []
    for j in range(0, ctrl.shape[1] - 1, 2):
        a, b, c = ctrl[:, j : j + 1], ctrl[:, j + 1 : j + 2], ctrl[:, j + 2 : j + 3]
        p = (1 - t) ** 2 * a + 2 * (1 - t) * t * b + t**2 * c  # (N, _POINTS, 2)
        pieces.append(np.stack([p[:, :-1], p[:, 1:]], axis=2))
    return np.concatenate(pieces, axis=1)


def _bitmaps(segments: np.ndarray, width: np.ndarray, size: int) -> np.ndarray:
    """Segments (N, S, 2, 2) and pen half-widths (N,) -> binary bitmaps (N, size, size)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    grid = np.stack(np.meshgrid(c, c, indexing="xy"), -1).reshape(1, 1, -1, 2)  # x, y
    p0, p1 = segments[:, :, None, 0], segments[:, :, None, 1]  # (N, S, 1, 2)
    d = p1 - p0
    t = np.clip(((grid - p0) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-9), 0, 1)
    dist = np.linalg.norm(grid - (p0 + t[..., None] * d), axis=-1).min(axis=1)  # (N, HW)
    return (dist < width[:, None]).reshape(-1, size, size)


def _draw(strokes: list[np.ndarray], n: int, grid: int, rng: np.random.Generator) -> np.ndarray:
    """n samples of one template as block counts (n, grid, grid) in [0, 1]."""
    angle, shear = rng.uniform(-0.25, 0.25, n), rng.uniform(-0.3, 0.3, n)
    cos, sin = np.cos(angle), np.sin(angle)
    rotate = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    stretch = np.zeros((n, 2, 2))
    stretch[:, 0, 0], stretch[:, 0, 1] = rng.uniform(0.75, 1.15, n), shear
    stretch[:, 1, 1] = rng.uniform(0.8, 1.15, n)
    affine, shift = rotate @ stretch, rng.uniform(-0.08, 0.08, (n, 1, 2))
    segments = np.concatenate(
        [
            _segments(
                np.einsum("nij,nkj->nki", affine, s - 0.5 + rng.normal(0, 0.04, (n, *s.shape)))
                + 0.5
                + shift
            )
            for s in strokes
        ],
        axis=1,
    ).astype(np.float32)
    size = grid * _BLOCK
    bits = _bitmaps(segments, rng.uniform(0.05, 0.09, n).astype(np.float32), size)
    return bits.reshape(n, grid, _BLOCK, grid, _BLOCK).sum((2, 4)) / _BLOCK**2


def generate(
    num_classes: int, samples_per_class: int, image_size: int, seed: int, grid: int = 8
) -> ImageSet:
    """`samples_per_class` images of each of `num_classes` glyphs, as uint8 RGB of `image_size`."""
    rng = np.random.default_rng(seed)
    templates = tqdm(_templates(num_classes, rng), desc="glyphs", unit="class")
    counts = [_draw(t, samples_per_class, grid, rng) for t in templates]
    return ImageSet(
        upsample(np.concatenate(counts), image_size),
        np.repeat(np.arange(num_classes, dtype=np.int64), samples_per_class),
        [f"glyph{i}" for i in range(num_classes)],
    )
