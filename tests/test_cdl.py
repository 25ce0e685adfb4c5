"""CDL-Prompt on tiny real ViTs: the mapping, folding, and the deployable student."""

from __future__ import annotations

import torch

from pipeline import models
from pipeline.continual.cdl import CDLStudent, cdl_loss
from pipeline.continual.learners import L2P, CodaPrompt
from pipeline.continual.model import PromptedViT
from tests.conftest import TINY, images


def _pair() -> tuple[CDLStudent, PromptedViT]:
    teacher = PromptedViT(
        models.create("vit_tiny_patch16_224", {**TINY, "embed_dim": 48, "depth": 3}, 4),
        CodaPrompt(48, tasks=2, components=4, length=4, layers=[0, 1, 2]),
        4,
    )
    student = CDLStudent(
        models.create("vit_tiny_patch16_224", TINY, 4),
        CodaPrompt(32, tasks=2, components=4, length=4, layers=[0, 1]),
        4,
        teacher,
        mapping=True,
    )
    with torch.no_grad():  # as a trained teacher's: a zero head's logits teach nothing
        torch.nn.init.normal_(teacher.head.weight)
    return student, teacher


def test_the_mapping_trains_only_the_current_tasks_prompts_and_folds_them_in():
    student, teacher = _pair()
    for model in (student, teacher):
        model.begin_task(1, [2, 3])
    before = student.learner.components.detach().clone()
    # a fresh mapping is a no-op: the student's prompts as they are
    assert (student.mapping.delta("components") == 0).all()
    torch.testing.assert_close(student.mapping.table("components"), before, rtol=0, atol=0)
    with torch.no_grad():  # as a trained mapping would be
        torch.nn.init.normal_(student.mapping.attention.out_proj.weight)
    delta = student.mapping.delta("components")
    assert (delta[:, :2] == 0).all() and delta[:, 2:].abs().max() > 0
    student.fold()
    after = student.learner.components.detach()
    torch.testing.assert_close(after[:, :2], before[:, :2], rtol=0, atol=0)
    torch.testing.assert_close(after[:, 2:], before[:, 2:] + delta[:, 2:])
    # folded: the mapping is a no-op again, so the next task starts from the folded prompts
    assert (student.mapping.delta("components") == 0).all()


def test_a_prompt_every_task_trains_gets_its_mapped_delta_once():
    """L2P's pool is trained by every task: folding must not add the same delta again when the
    next task starts."""
    teacher = PromptedViT(
        models.create("vit_tiny_patch16_224", {**TINY, "embed_dim": 48, "depth": 3}, 4),
        L2P(48, pool=4, length=4, top_k=2, layers=[0]),
        4,
    )
    student = CDLStudent(
        models.create("vit_tiny_patch16_224", TINY, 4),
        L2P(32, pool=4, length=4, top_k=2, layers=[0]),
        4,
        teacher,
        mapping=True,
    )
    with torch.no_grad():
        torch.nn.init.normal_(student.mapping.attention.out_proj.weight)
    before = student.learner.prompts.detach().clone()
    delta = student.mapping.delta("prompts")
    assert delta.abs().max() > 0
    student.fold()
    for model in (student, teacher):
        model.begin_task(1, [2, 3])
    torch.testing.assert_close(student.mapping.table("prompts"), before + delta)


def test_the_deployable_student_predicts_as_the_cdl_student_without_the_teacher():
    student, teacher = _pair()
    for model in (student, teacher):
        model.begin_task(0, [0, 1])
    with torch.no_grad():  # after a first step: zero heads pass no gradient to the prompts
        torch.nn.init.normal_(student.head.weight)
        torch.nn.init.normal_(student.kd_head.weight)
    x = images(5)
    loss = cdl_loss(teacher, [0, 1], alpha=0.5, temperature=2.0)(
        student.train(), x, torch.tensor([0, 1, 0, 1, 1])
    )
    loss.backward()
    assert student.mapping.attention.out_proj.weight.grad.abs().max() > 0
    assert student.kd_head.weight.grad.abs().max() > 0
    assert not any(p.grad is not None for p in teacher.parameters())
    student.fold()
    student.learner.source = None  # the folded tables alone, as deployed
    expected = student.eval()(x)
    student.learner.source = student.mapping.table
    plain = student.materialize()
    got = plain(x)
    torch.testing.assert_close(got[:, :2], expected[:, :2], rtol=0, atol=1e-5)
    assert torch.isinf(got[:, 2:]).all(), "classes not yet seen take no mass"


def test_the_feature_loss_adds_fitnets_mse_through_the_regressor():
    student, teacher = _pair()
    for model in (student, teacher):
        model.begin_task(0, [0, 1])
    student.hint = torch.nn.Linear(32, 48)
    x, y = images(5), torch.tensor([0, 1, 0, 1, 1])
    student.train()
    torch.manual_seed(1)
    plain = cdl_loss(teacher, [0, 1], alpha=0.5, temperature=2.0)(student, x, y)
    with_features = cdl_loss(teacher, [0, 1], 0.5, 2.0, feature_weight=0.1)(student, x, y)
    expected = torch.nn.functional.mse_loss(student.hint(student.feature), teacher.features(x))
    torch.testing.assert_close(with_features, plain + 0.1 * expected)
    with_features.backward()
    assert student.hint.weight.grad.abs().max() > 0
