"""Glyphs: the project-made source dataset the default backbones are pre-trained on.

Each class is a fixed random "character" of pen strokes (a seeded template); each sample draws it
with a random affine transform, per-vertex jitter and pen width, anti-aliased, as bright ink on a
dark ground like the digits. Stroke features transfer to handwriting without ever showing a digit,
so the downstream task still has something to learn. Fully offline and deterministic per seed.
"""

from __future__ import annotations

import itertools

import numpy as np

from pipeline.data.arrays import ImageSet


def _templates(num_classes: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per class, an array (S, 2, 2) of S line segments in the unit square."""
    out = []
    for _ in range(num_classes):
        segments = []
        for _stroke in range(rng.integers(1, 3)):
            pts = rng.uniform(0.2, 0.8, size=(rng.integers(3, 5), 2))
            segments += [np.stack([a, b]) for a, b in itertools.pairwise(pts)]
        out.append(np.stack(segments))
    return out


def _render(segments: np.ndarray, width: np.ndarray, size: int) -> np.ndarray:
    """segments (N, S, 2, 2), width (N,) -> float images (N, size, size) in [0, 1]."""
    c = (np.arange(size) + 0.5) / size
    grid = np.stack(np.meshgrid(c, c, indexing="xy"), -1).reshape(1, 1, -1, 2)  # x, y
    p0, p1 = segments[:, :, None, 0], segments[:, :, None, 1]  # (N, S, 1, 2)
    d = p1 - p0
    t = np.clip(((grid - p0) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-9), 0, 1)
    dist = np.linalg.norm(grid - (p0 + t[..., None] * d), axis=-1).min(axis=1)  # (N, HW)
    ink = np.clip((width[:, None] - dist) * size + 0.5, 0, 1)
    return ink.reshape(-1, size, size)


def generate(num_classes: int, samples_per_class: int, image_size: int, seed: int) -> ImageSet:
    rng = np.random.default_rng(seed)
    templates = _templates(num_classes, rng)
    images, labels = [], []
    for label, tpl in enumerate(templates):
        n = samples_per_class
        angle = rng.uniform(-0.3, 0.3, n)
        scale = rng.uniform(0.8, 1.15, n)
        shift = rng.uniform(-0.1, 0.1, (n, 2))
        cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
        rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # (n, 2, 2)
        pts = tpl[None] - 0.5 + rng.normal(0, 0.03, (n, *tpl.shape))
        pts = np.einsum("nij,nsbj->nsbi", rot, pts) + 0.5 + shift[:, None, None]
        ink = _render(pts, rng.uniform(0.04, 0.09, n), image_size)
        ink = np.clip(ink + rng.normal(0, 0.03, ink.shape), 0, 1)
        images.append((ink * 255).round().astype(np.uint8))
        labels.append(np.full(n, label, np.int64))
    gray = np.concatenate(images)
    return ImageSet(
        np.repeat(gray[..., None], 3, axis=-1),
        np.concatenate(labels),
        [f"glyph{i}" for i in range(num_classes)],
    )
