"""iDAT, inverse distillation: a SMALLER teacher and a LARGER student, adapters in both,
trained jointly from the start (mutual learning: nothing is detached).

Loss = CE(z_S, y) + CE(z_T, y) + KD(z_S, z_T), KD = MSE on logits (the official script) or
KL(softmax(z_T/5) ‖ softmax(z_S/5)) without T² (its argparse default). One backward of the summed
loss moves both models (the official code's AMP path back-propagates twice, and without AMP
its teacher never steps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import PipelineError, build, paths
from pipeline.artifacts import save_variant
from pipeline.config import Params
from pipeline.data import ImageSet
from pipeline.distill.losses import kl_logits, mse_logits
from pipeline.train import fit, is_main
from pipeline.train.loop import LossFn
from pipeline.variants import Variant


class Pair(nn.Module):
    """Student and teacher trained as one module; its output is the student's."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def param_group_modules(self) -> list[nn.Module]:
        """Two parameter groups, as the official two optimizers; both step every batch."""
        return [self.student, self.teacher]


def loss(kd: str, temperature: float) -> LossFn:
    if kd not in ("mse", "kl"):
        raise ValueError(f"kd must be mse or kl, got {kd!r}")

    def idat_loss(pair: Pair, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        zs, zt = pair.student(x), pair.teacher(x)
        distill = (
            mse_logits(zs, zt) if kd == "mse" else kl_logits(zs, zt, temperature, t_squared=False)
        )
        return F.cross_entropy(zs, y) + F.cross_entropy(zt, y) + distill

    return idat_loss


def build_pair(params: Params, method: str, num_classes: int) -> tuple[Pair, str, str]:
    """(pair, larger role, smaller role): the larger backbone is the student, as iDAT has it."""
    a, b = (
        build.adapted(params, paths.BACKBONES / r, method, num_classes)
        for r in ("teacher", "student")
    )
    size = {r: sum(p.numel() for p in m.parameters()) for r, m in (("teacher", a), ("student", b))}
    if size["teacher"] == size["student"]:
        raise PipelineError("iDAT needs backbones of different sizes: the smaller teaches")
    large, small = sorted(size, key=size.get, reverse=True)
    models = {"teacher": a, "student": b}
    return Pair(models[large], models[small]), large, small


def run(params: Params, variant: Variant, train: ImageSet, val: ImageSet) -> list[dict]:
    """Train the pair; save the student (the larger backbone) and, beside it, the teacher."""
    pair, large, small = build_pair(params, variant.method, len(train.classes))
    cfg = params.distill.idat
    history = fit(
        pair,
        train,
        val,
        build.recipe(params, variant.method),
        seed=params.seed,
        desc=variant.name,
        **build.run_dirs("distill", variant.name),
        loss_fn=loss(cfg.kd, cfg.temperature),
        fingerprint=build.fingerprint(
            variant.name, pair.student, paths.BACKBONES, idat=cfg.model_dump()
        ),
    )
    if not is_main():
        return history
    common = {"classes": train.classes, "history": history, "distillation": "idat"}
    save_variant(
        variant.folder,
        pair.student,
        name=variant.name,
        role=large,
        backbone=paths.BACKBONES / large,
        **common,
    )
    teacher = variant.idat_teacher
    save_variant(
        teacher.folder,
        pair.teacher,
        name=teacher.name,
        role=small,
        backbone=paths.BACKBONES / small,
        **common,
    )
    return history
