"""Distillation losses on logits and on token features."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_logits(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, t_squared: bool = True
) -> torch.Tensor:
    """KL(softmax(z_T / T) ‖ softmax(z_S / T)), batch mean; × T² (Hinton) unless disabled."""
    loss = F.kl_div(
        F.log_softmax(student / temperature, -1),
        F.log_softmax(teacher / temperature, -1),
        reduction="batchmean",
        log_target=True,
    )
    return loss * temperature**2 if t_squared else loss


def mse_logits(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(student, teacher)


def l1_features(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over every token and channel."""
    return F.l1_loss(student, teacher)


def channel_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL between the per-token channel distributions (softmax over channels), token mean."""
    s = F.log_softmax(student, -1).flatten(0, -2)
    t = F.log_softmax(teacher, -1).flatten(0, -2)
    return F.kl_div(s, t, reduction="batchmean", log_target=True)
