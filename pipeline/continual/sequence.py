"""Training a prompted model through a task sequence, and the continual-learning figures:
the accuracy matrix (after task t, on task i), average accuracy and forgetting."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pipeline.config import TrainConfig
from pipeline.continual.losses import masked_ce
from pipeline.continual.model import PromptedViT
from pipeline.data import ImageSet
from pipeline.train import fit
from pipeline.train.loop import LossFn, evaluate

Task = tuple[list[int], ImageSet]  # (classes, images)


def summary(matrix: list[list[float | None]]) -> dict[str, float]:
    """average_accuracy: mean accuracy over all tasks after the last one; forgetting: mean over
    the earlier tasks of (best accuracy before the last task - accuracy after it)."""
    final = [a for a in matrix[-1] if a is not None]
    last = len(matrix) - 1
    drops = [max(matrix[t][i] for t in range(i, last)) - matrix[last][i] for i in range(last)]
    return {
        "average_accuracy": float(np.mean(final)),
        "forgetting": float(np.mean(drops)) if drops else 0.0,
    }


def plain_loss(classes: list[int]) -> LossFn:
    """Cross-entropy on the current classes plus the learner's key loss."""

    def loss(model: PromptedViT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return masked_ce(model(x), y, classes) + model.key_loss

    return loss


def run_sequence(
    model: PromptedViT,
    train: list[Task],
    val: list[Task],
    test: list[Task],
    recipe: TrainConfig,
    *,
    seed: int,
    checkpoints: Path,
    desc: str,
    loss_for: Callable[[int, list[int]], LossFn] = lambda t, classes: plain_loss(classes),
    after_task: Callable[[int], None] | None = None,
) -> list[list[float | None]]:
    """Train task after task; the accuracy matrix on each test task seen so far (None above
    the diagonal: a task not yet learnt)."""
    matrix: list[list[float | None]] = []
    for t, (classes, data) in enumerate(train):
        model.begin_task(t, classes)
        fit(
            model,
            data,
            val[t][1],
            recipe,
            seed=seed + t,
            checkpoint_dir=checkpoints / f"task{t}",
            desc=f"{desc} task {t + 1}/{len(train)}",
            loss_fn=loss_for(t, classes),
        )
        row: list[float | None] = [evaluate(model, test[i][1])[1] for i in range(t + 1)]
        matrix.append(row + [None] * (len(train) - t - 1))
        if after_task:
            after_task(t)
    return matrix
