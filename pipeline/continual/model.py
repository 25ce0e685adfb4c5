"""A prompted ViT for class-incremental learning: one frozen timm ViT used twice (the plain
pass gives the query, the prompted pass the feature), a prompt learner between the passes, and
a linear head over every class of the sequence. At inference only the classes seen so far
compete."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pipeline.continual.learners import PromptLearner
from pipeline.continual.losses import current_only
from pipeline.continual.memo import ImageMemo
from pipeline.continual.prefix import prompted_features


def zero_head(width: int, num_classes: int) -> nn.Linear:
    """A linear head starting at zero. Each task trains its rows by a softmax over its own
    classes only, which never changes the sum of those rows: a random start would leave every
    task a random logit level of its own, against which the tasks' classes then compete."""
    head = nn.Linear(width, num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class PromptedViT(nn.Module):
    def __init__(self, vit: VisionTransformer, learner: PromptLearner, num_classes: int) -> None:
        super().__init__()
        self.vit = vit.eval().requires_grad_(False)
        self.learner = learner
        self.head = zero_head(vit.embed_dim, num_classes)
        self.task = 0  # the task being trained (DualPrompt's E-prompt while training)
        self.seen: list[int] = []  # classes of the tasks trained so far
        self.key_loss = self.feature = torch.zeros(())
        self.hint: nn.Module | None = None  # FitNets' regressor to the teacher's width, if used
        # the query pass runs the frozen ViT alone: in training, once per image
        self.queries = ImageMemo(lambda images: prompted_features(self.vit, images))

    @property
    def patch_embed(self) -> nn.Module:  # what a serving backend reads the input shape from
        return self.vit.patch_embed

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def train(self, mode: bool = True) -> PromptedViT:
        super().train(mode)
        self.vit.eval()  # frozen: no dropout, whatever the mode
        return self

    def begin_task(self, task: int, classes: list[int]) -> None:
        self.task = task
        self.learner.begin_task(task)
        self.seen = [*self.seen, *(c for c in classes if c not in self.seen)]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if self.training:
            query = self.queries(images)
        else:  # inference and export: the pass itself
            with torch.no_grad():
                query = prompted_features(self.vit, images)
        prefixes, key_loss = self.learner.select(query, self.task if self.training else None)
        feature = prompted_features(self.vit, images, prefixes)
        if self.training:  # loss terms; inference (and export) keeps no state
            self.key_loss, self.feature = key_loss, feature
        return feature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(images))
        return logits if self.training else current_only(logits, self.seen)
