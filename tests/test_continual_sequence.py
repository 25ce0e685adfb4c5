"""Continual-learning figures and a real (tiny) task sequence."""

from __future__ import annotations

import pytest
import torch

from pipeline import models
from pipeline.config import TrainConfig
from pipeline.continual.learners import CodaPrompt
from pipeline.continual.model import PromptedViT
from pipeline.continual.sequence import plain_loss, run_sequence, summary, task_aware
from pipeline.continual.tasks import split_tasks
from pipeline.train.loop import evaluate
from tests.conftest import TINY


def _coda_model() -> PromptedViT:
    """A tiny real ViT with CODA-Prompt for 2 tasks of the 4 glyph classes."""
    vit = models.create("vit_tiny_patch16_224", TINY, 4)
    return PromptedViT(vit, CodaPrompt(32, tasks=2, components=4, length=4, layers=[0, 1]), 4)


def _sequence(model: PromptedViT, tasks, recipe: TrainConfig, folder, **kwargs):
    """The tasks as train, val and test alike, seed 0."""
    return run_sequence(
        model, tasks, tasks, tasks, recipe, seed=0, checkpoints=folder, desc="coda", **kwargs
    )


def test_average_accuracy_and_forgetting_follow_their_definitions():
    matrix = [[90.0, None, None], [70.0, 80.0, None], [60.0, 75.0, 85.0]]
    got = summary(matrix)
    assert got["average_accuracy"] == pytest.approx((60 + 75 + 85) / 3)
    assert got["forgetting"] == pytest.approx(((90 - 60) + (80 - 75)) / 2)
    assert summary([[50.0]]) == {"average_accuracy": 50.0, "forgetting": 0.0}


def test_a_sequence_fills_the_matrix_and_leaves_old_classes_heads_alone(tmp_path, glyph_data):
    tasks = split_tasks(glyph_data, [0, 1, 2, 3], 2)
    model = _coda_model()
    recipe = TrainConfig(epochs=2, batch_size=16, lr=0.05, warmup_epochs=0)
    heads: list[torch.Tensor] = []
    matrix = _sequence(
        model,
        tasks,
        recipe,
        tmp_path,
        after_task=lambda t: heads.append(model.head.weight.detach().clone()),
    )
    assert matrix[0][1] is None and all(0 <= a <= 100 for a in (*matrix[0][:1], *matrix[1]))
    assert model.seen == [0, 1, 2, 3]
    torch.testing.assert_close(heads[1][:2], heads[0][:2], rtol=0, atol=0)  # masked: untouched
    assert (heads[1][2:] - heads[0][2:]).abs().max() > 0
    # a softmax over a task's own classes never moves the sum of its rows: the head starts at
    # zero, so every task's logits stay centred at the same level (no random offset per task)
    for t, rows in ((0, slice(0, 2)), (1, slice(2, 4))):
        assert heads[t][rows].abs().max() > 0.01
        torch.testing.assert_close(heads[t][rows].sum(0), torch.zeros(32), rtol=0, atol=1e-5)


def test_a_stopped_sequence_resumes_at_the_task_it_was_in(tmp_path, glyph_data):
    tasks = split_tasks(glyph_data, [0, 1, 2, 3], 2)
    recipe = TrainConfig(epochs=1, batch_size=16, lr=0.05, warmup_epochs=0)
    trained: list[int] = []

    def run(folder: str, crash_at: int | None = None, **kwargs):
        """A fresh model through the two tasks; the tasks it trains are logged in `trained`."""
        torch.manual_seed(0)
        model = _coda_model()

        def loss_for(t, classes):
            if t == crash_at:
                raise KeyboardInterrupt
            trained.append(t)
            return plain_loss(classes)

        matrix = _sequence(model, tasks, recipe, tmp_path / folder, loss_for=loss_for, **kwargs)
        return matrix, model.state_dict()

    whole, expected = run("whole")
    with pytest.raises(KeyboardInterrupt):
        run("stopped", crash_at=1)
    trained.clear()
    resumed, state = run("stopped")
    assert trained == [1]  # the first task was not trained again
    assert resumed == whole
    for k, v in state.items():
        torch.testing.assert_close(v, expected[k], rtol=0, atol=0)

    trained.clear()  # a run with another fingerprint starts over
    run("stopped", fingerprint={"alpha": 0.9})
    assert trained == [0, 1]


def test_task_aware_accuracy_ignores_confusion_between_tasks(glyph_data):
    tasks = split_tasks(glyph_data, [0, 1, 2, 3], 2)
    model = _coda_model()
    model.begin_task(1, [0, 1, 2, 3])
    before = task_aware(model, tasks)
    with torch.no_grad():
        model.head.bias[:2] += 100  # the first task's classes win every image
    assert evaluate(model, tasks[1][1])[1] == 0
    assert task_aware(model, tasks) == pytest.approx(before)
