"""Frozen passes remembered per image: computed once, the same values as the pass itself."""

from __future__ import annotations

import torch

from pipeline.continual.learners import L2P
from pipeline.continual.memo import ImageMemo, frozen_outputs
from pipeline.continual.model import PromptedViT
from pipeline.continual.prefix import prompted_features


def test_each_image_is_computed_once_whatever_the_batch():
    calls: list[int] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x.flatten(1).sum(1, keepdim=True) * 2

    memo = ImageMemo(fn)
    x = torch.randn(6, 3, 4, 4)
    torch.testing.assert_close(memo(x[:4]), fn(x[:4]))
    order = [5, 1, 3, 0]  # a reshuffled batch: only image 5 is new
    torch.testing.assert_close(memo(x[order]), fn(x[order]))
    assert calls == [4, 4, 1, 4]  # (the asserts' own calls to fn are the 2nd and 4th)


def test_prompted_vit_remembers_its_query_pass_in_training_only(tiny_vit):
    vit = tiny_vit(num_classes=0)
    model = PromptedViT(vit, L2P(width=32, pool=4, length=2, top_k=2, layers=[0]), 4).train()
    x = torch.randn(5, 3, 16, 16)
    first = model.features(x)
    assert len(model.queries.rows) == 5
    torch.testing.assert_close(model.queries(x), prompted_features(vit, x), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.features(x[[4, 0]]), first[[4, 0]], atol=1e-6, rtol=0)
    model.eval()
    model.queries.rows.clear()
    model.features(x)
    assert not model.queries.rows, "inference (and export) runs the pass itself"


def test_frozen_teacher_outputs_split_back_into_features_and_logits(tiny_vit):
    teacher = PromptedViT(tiny_vit(num_classes=0), L2P(32, 4, 2, 2, [0]), 4).eval()
    x = torch.randn(3, 3, 16, 16)
    features, logits = frozen_outputs(teacher)(x)
    with torch.no_grad():
        expected = teacher.features(x)
        torch.testing.assert_close(features, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(logits, teacher.head(expected), atol=1e-6, rtol=0)
