"""The CDL study: for each prompt learner, a teacher, a student alone, a student with plain KD
and a CDL-Prompt student, each through the same task sequence."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline import models, paths
from pipeline.config import ContinualConfig, Params, override
from pipeline.continual.cdl import CDLStudent, cdl_loss
from pipeline.continual.learners import L2P, CodaPrompt, DualPrompt, PromptLearner, scale_layers
from pipeline.continual.losses import continual_kd, feature_hint
from pipeline.continual.memo import frozen_outputs
from pipeline.continual.model import PromptedViT
from pipeline.continual.sequence import Task, run_sequence, summary, task_aware, trainable
from pipeline.train.loop import LossFn, seed_everything


def make_learner(name: str, cfg: ContinualConfig, width: int, depth: int) -> PromptLearner:
    """A learner of the paper's sizes, its layers scaled from 12 blocks to `depth`."""
    if name == "l2p":
        c = cfg.l2p
        return L2P(width, c.pool, c.length, c.top_k, scale_layers(c.layers, depth))
    if name == "dualprompt":
        c = cfg.dualprompt
        return DualPrompt(
            width,
            cfg.tasks,
            c.g_length,
            scale_layers(c.g_layers, depth),
            c.e_length,
            scale_layers(c.e_layers, depth),
        )
    c = cfg.coda
    return CodaPrompt(width, cfg.tasks, c.components, c.length, scale_layers(c.layers, depth))


def prompted(params: Params, role: str, learner: str, num_classes: int) -> PromptedViT:
    seed_everything(params.seed)  # every run starts from the same prompts and head
    vit = models.load_model(paths.BACKBONES / role, num_classes)
    return PromptedViT(
        vit, make_learner(learner, params.continual, vit.embed_dim, len(vit.blocks)), num_classes
    )


def run_learner(
    params: Params,
    learner: str,
    tasks: dict[str, list[Task]],
    num_classes: int,
    checkpoints: Path,
    fingerprint: dict | None = None,
) -> tuple[dict[str, dict], dict[str, PromptedViT]]:
    """Figures per run (accuracy_matrix, average_accuracy, forgetting, task_aware_accuracy)
    and the trained deployable students (`student`, `kd`, `cdl`) of one learner. `fingerprint`:
    what the runs depend on beyond the params (the backbones, the data), for resuming."""
    cfg = params.continual
    recipe = override(params.train, cfg.recipe, "continual.recipe")
    splits = (tasks["train"], tasks["val"], tasks["test"])
    results, snapshots = {}, []

    def sequence(run: str, model: PromptedViT, **hooks) -> None:
        matrix = run_sequence(
            model,
            *splits,
            recipe,
            seed=params.seed,
            checkpoints=checkpoints / learner / run,
            desc=f"{learner} {run}",
            fingerprint={
                "continual": cfg,
                "recipe": recipe,
                "learner": learner,
                "inputs": fingerprint,
            },
            **hooks,
        )
        results[run] = {
            "accuracy_matrix": matrix,
            **summary(matrix),
            "task_aware_accuracy": task_aware(model, tasks["test"]),
        }

    teacher = prompted(params, "teacher", learner, num_classes)
    sequence("teacher", teacher, after_task=lambda t: snapshots.append(trainable(teacher)))

    def teacher_at(t: int, classes: list[int]) -> PromptedViT:
        """The teacher as it was after task t, frozen."""
        teacher.begin_task(t, classes)
        teacher.load_state_dict(snapshots[t], strict=False)
        return teacher.eval().requires_grad_(False)

    student = prompted(params, "student", learner, num_classes)
    sequence("student", student)

    def with_hint(model: PromptedViT) -> PromptedViT:
        """The student with FitNets' regressor to the teacher's width, when that loss is on."""
        if cfg.feature_weight:
            model.hint = torch.nn.Linear(model.vit.embed_dim, teacher.vit.embed_dim)
        return model

    def kd_loss(t: int, classes: list[int]) -> LossFn:
        frozen = frozen_outputs(teacher_at(t, classes))

        def loss(model: PromptedViT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            ft, zt = frozen(x)
            kd = continual_kd(model(x), zt, y, classes, cfg.alpha, cfg.temperature)
            out = kd + model.key_loss
            return out + cfg.feature_weight * feature_hint(model, ft) if cfg.feature_weight else out

        return loss

    kd = with_hint(prompted(params, "student", learner, num_classes))
    sequence("kd", kd, loss_for=kd_loss)

    base = prompted(params, "student", learner, num_classes)
    cdl = CDLStudent(base.vit, base.learner, num_classes, teacher, cfg.mapping_heads, cfg.mapping)
    sequence(
        "cdl",
        with_hint(cdl),
        loss_for=lambda t, classes: cdl_loss(
            teacher_at(t, classes),
            classes,
            cfg.alpha,
            cfg.temperature,
            cfg.feature_weight,
            cdl.seen if cfg.kd_head_classes == "seen" else classes,
        ),
        after_task=lambda t: cdl.fold(),
    )
    return results, {"student": student.eval(), "kd": kd.eval(), "cdl": cdl.materialize()}
