"""The continual losses against their formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.continual.losses import continual_kd, masked_ce


def test_old_class_logits_are_masked_out_of_the_cross_entropy():
    logits = torch.tensor([[9.0, 1.0, 2.0, -5.0]], requires_grad=True)
    loss = masked_ce(logits, torch.tensor([2]), classes=[1, 2])
    expected = -math.log(math.exp(2) / (math.exp(1) + math.exp(2)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 0] == 0 and logits.grad[0, 3] == 0, "old and future classes get no push"


def test_kd_is_the_weighted_sum_of_masked_ce_and_t2_kl_on_current_classes():
    student, teacher = torch.randn(5, 6), torch.randn(5, 6)
    labels = torch.tensor([2, 3, 2, 3, 3])
    classes, alpha, t = [2, 3], 0.3, 2.0
    p_t = F.softmax(teacher[:, classes] / t, -1)
    log_p_s = F.log_softmax(student[:, classes] / t, -1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
    ce = F.cross_entropy(student[:, classes], labels - 2)
    got = continual_kd(student, teacher, labels, classes, alpha=alpha, temperature=t)
    torch.testing.assert_close(got, (1 - alpha) * ce + alpha * t * t * kl)
    same = continual_kd(teacher, teacher, labels, classes, alpha=1.0, temperature=t)
    assert same.abs() < 1e-6, "a student equal to its teacher has no KD loss"
