"""Class-incremental task sequences: a dataset's classes in a fixed order, cut into tasks of
equal size; each task holds the images of its classes, labels kept global."""

from __future__ import annotations

import numpy as np

from pipeline import PipelineError
from pipeline.data import ImageSet


def class_order(num_classes: int, order: list[int] | int | None) -> list[int]:
    """The class sequence: natural order (None), a seeded permutation (an int), or a list."""
    if order is None:
        return list(range(num_classes))
    if isinstance(order, int):
        return np.random.default_rng(order).permutation(num_classes).tolist()
    if sorted(order) != list(range(num_classes)):
        raise PipelineError(
            f"continual.class_order must list each of the {num_classes} classes once, got {order}"
        )
    return list(order)


def split_tasks(data: ImageSet, order: list[int], tasks: int) -> list[tuple[list[int], ImageSet]]:
    """(classes, images of those classes) per task, in order."""
    if tasks < 1 or len(order) % tasks:
        raise PipelineError(
            f"continual.tasks ({tasks}) must divide the {len(order)} classes into equal tasks"
        )
    size = len(order) // tasks
    out = []
    for t in range(tasks):
        classes = order[t * size : (t + 1) * size]
        out.append((classes, data.subset(np.flatnonzero(np.isin(data.labels, classes)))))
    return out
