"""Plain logit knowledge distillation from a frozen trained teacher (timm train.py's vocabulary:
task-loss weight, distill-loss weight, temperature)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import build, paths
from pipeline.artifacts import load_variant, save_variant
from pipeline.config import Params
from pipeline.data import ImageSet
from pipeline.distill.losses import kl_logits
from pipeline.train import fit, is_main, pick_device
from pipeline.train.loop import LossFn
from pipeline.variants import Variant, parse_variant


def loss(
    teacher: nn.Module, task_weight: float, distill_weight: float, temperature: float
) -> LossFn:
    teacher.eval().requires_grad_(False)

    def kd_loss(student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            zt = teacher(x)
        zs = student(x)
        return task_weight * F.cross_entropy(zs, y) + distill_weight * kl_logits(
            zs, zt, temperature
        )

    return kd_loss


def run(params: Params, variant: Variant, train: ImageSet, val: ImageSet) -> list[dict]:
    """The student backbone with adapters, taught by the trained teacher variant."""
    cfg = params.distill.kd
    teacher, _ = load_variant(parse_variant(cfg.teacher, params).folder)
    student = build.adapted(params, paths.BACKBONES / "student", variant.method, len(train.classes))
    history = fit(
        student,
        train,
        val,
        build.recipe(params, variant.method),
        seed=params.seed,
        desc=variant.name,
        **build.run_dirs("distill", variant.name),
        loss_fn=loss(
            teacher.to(pick_device()), cfg.task_weight, cfg.distill_weight, cfg.temperature
        ),
        fingerprint=build.fingerprint(
            variant.name,
            student,
            paths.BACKBONES / "student",
            parse_variant(cfg.teacher, params).folder,
            kd=cfg.model_dump(),
        ),
    )
    if is_main():
        save_variant(
            variant.folder,
            student,
            name=variant.name,
            role="student",
            backbone=paths.BACKBONES / "student",
            classes=train.classes,
            history=history,
            distillation="kd",
            teacher=cfg.teacher,
        )
    return history
