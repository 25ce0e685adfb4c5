"""Training a prompted model through a task sequence, and the continual-learning figures:
the accuracy matrix (after task t, on task i), average accuracy and forgetting."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import TrainConfig
from pipeline.continual.losses import current_only, masked_ce
from pipeline.continual.model import PromptedViT
from pipeline.data import ImageSet
from pipeline.io import read_json, read_tensors, save_tensors, write_json
from pipeline.train import fit
from pipeline.train.loop import LossFn, evaluate, predict

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


def task_aware(model: PromptedViT, test: list[Task]) -> float:
    """Mean top-1 over the test tasks with each task's own classes alone competing (as if the
    task were known): what is left when confusing one task for another is taken out."""
    top1 = []
    for classes, data in test:
        logits = current_only(predict(model, data), classes)
        top1.append((logits.argmax(1).numpy() == data.labels).mean() * 100)
    return float(np.mean(top1))


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
    fingerprint: dict[str, Any] | None = None,
) -> list[list[float | None]]:
    """Train task after task; the accuracy matrix on each test task seen so far (None above
    the diagonal: a task not yet learnt).

    Each finished task leaves its trained state and row in `checkpoints/task<t>.done`, so a run
    stopped part-way resumes at the task it was in (the training loop resumes within a task).
    `fingerprint` names what the run depends on beyond the recipe (a changed one starts over).
    """
    key = hashlib.sha256(json.dumps([fingerprint, seed], sort_keys=True, default=str).encode())
    matrix: list[list[float | None]] = []
    for t, (classes, data) in enumerate(train):
        model.begin_task(t, classes)
        done = checkpoints / f"task{t}.done"
        row = _restore(done, model, key.hexdigest())
        if row is None:
            fit(
                model,
                data,
                val[t][1],
                recipe,
                seed=seed + t,
                checkpoint_dir=checkpoints / f"task{t}",
                desc=f"{desc} task {t + 1}/{len(train)}",
                loss_fn=loss_for(t, classes),
                fingerprint=fingerprint,
            )
            row = [evaluate(model, test[i][1])[1] for i in range(t + 1)]
            save_tensors(done / "state.safetensors", trainable(model))
            write_json(done / "row.json", {"fingerprint": key.hexdigest(), "row": row})
        matrix.append(row + [None] * (len(train) - t - 1))
        if after_task:  # after the save: a resumed task replays it on the restored state
            after_task(t)
    return matrix


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the parameters `model` trains."""
    return {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}


def _restore(done: Path, model: torch.nn.Module, key: str) -> list[float | None] | None:
    """A finished task's row, its state loaded into `model`; None if it has not finished."""
    saved = read_json(done / "row.json") if (done / "row.json").is_file() else {}
    if saved.get("fingerprint") != key:
        return None
    state = read_tensors(done / "state.safetensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    return saved["row"]
