"""The continual losses: cross-entropy on the current task's classes (old and future classes'
logits masked out) and CDL's distillation from the frozen teacher on the same classes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pipeline.distill.losses import kl_logits


def current_only(logits: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Logits with every class outside `classes` at -inf: they take no probability mass."""
    mask = torch.full_like(logits, float("-inf"))
    mask[:, list(classes)] = 0
    return logits + mask


def masked_ce(logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Cross-entropy among the current task's classes only: old classes are not pushed down."""
    return F.cross_entropy(current_only(logits, classes), labels)


def continual_kd(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[int],
    alpha: float = 0.5,
    temperature: float = 2.0,
) -> torch.Tensor:
    """(1 - alpha) CE(z_S, y) + alpha T^2 KL(softmax(z_T / T) || softmax(z_S / T)), both on the
    current task's classes."""
    index = list(classes)
    kd = kl_logits(student[:, index], teacher[:, index], temperature)
    return (1 - alpha) * masked_ce(student, labels, classes) + alpha * kd


def feature_hint(model: torch.nn.Module, teacher_feature: torch.Tensor) -> torch.Tensor:
    """FitNets' feature loss: MSE(Linear_{D_S -> D_T}(F_S), F_T) on the student's last training
    feature, through the regressor `model.hint`."""
    return F.mse_loss(model.hint(model.feature), teacher_feature)
