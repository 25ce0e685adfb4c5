"""CDL-Prompt: a student with a KD head beside its own head, and optionally prompts mapped
from its teacher's.

- The student keeps its own prompt learner (its own keys and query), so inference needs no
  teacher pass and costs what the student alone costs.
- A KD head beside the student head learns from the teacher's logits; the prediction is the
  mean of both heads' logits, as the official code has it. The paper's KL compares the current
  task's classes; `kd_head_classes="seen"` compares every class seen so far, so the KD head
  also learns how the teacher ranks the old classes against the new ones.
- The paper's mapping of teacher prompts into the student's is not public (the official code
  runs none); with `mapping`, this is our design of it. While a task trains, each prompt the
  task trains reads its teacher's counterpart (the table at the same relative depth) through a
  trainable projection (teacher width -> student width) and a cross-attention:
  P_S' = P_S + Attn(P_S, W P_T, W P_T). The attention's output projection starts at zero, so a
  fresh mapping leaves the student's prompts as they are. When the task ends, P_S' is folded
  into P_S for those prompts (`fold`) and the mapping starts again from a no-op.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pipeline.continual.learners import PromptLearner
from pipeline.continual.losses import current_only, feature_hint, masked_ce
from pipeline.continual.memo import frozen_outputs
from pipeline.continual.model import PromptedViT, zero_head
from pipeline.distill.losses import kl_logits
from pipeline.train.loop import LossFn


def _matching(teacher: torch.Tensor, count: int) -> torch.Tensor:
    """The teacher's tables for `count` student tables: the one at the same relative depth."""
    n = teacher.shape[0]
    return teacher[[round(j * (n - 1) / max(count - 1, 1)) for j in range(count)]]


class MappedPrompts(nn.Module):
    def __init__(
        self, student: PromptLearner, teacher: PromptLearner, widths: tuple[int, int], heads: int
    ) -> None:
        super().__init__()
        if type(student) is not type(teacher):
            raise ValueError("CDL-Prompt maps prompts between learners of the same kind")
        width_s, width_t = widths
        self.projection = nn.Linear(width_t, width_s)
        self.attention = nn.MultiheadAttention(width_s, heads, batch_first=True)
        # the mapping starts as a no-op (P_S' = P_S): it adds only what training finds useful
        nn.init.zeros_(self.attention.out_proj.weight)
        nn.init.zeros_(self.attention.out_proj.bias)
        # held outside the module tree: the teacher is not the student's to train or save
        self._learners = (student, teacher)

    def delta(self, name: str) -> torch.Tensor:
        """What the teacher adds to the student's table `name`, on the prompts it trains now."""
        student, teacher = self._learners
        own = getattr(student, name)
        theirs = _matching(getattr(teacher, name).detach(), own.shape[0])
        if theirs.shape[:-1] != own.shape[:-1]:
            raise ValueError(
                f"CDL-Prompt: the teacher's {name} {tuple(theirs.shape)} must match the "
                f"student's {tuple(own.shape)} but for width"
            )
        length, width = own.shape[-2:]
        q = own.reshape(-1, length, width)
        kv = self.projection(theirs.reshape(-1, length, theirs.shape[-1]))
        read = self.attention(q, kv, kv, need_weights=False)[0].reshape(own.shape)
        return read * student.fresh(name).to(read.device)[..., None, None]

    def table(self, name: str) -> torch.Tensor:
        return getattr(self._learners[0], name) + self.delta(name)


class CDLStudent(PromptedViT):
    """The student of CDL-Prompt, beside its frozen `teacher` on the same task sequence."""

    def __init__(
        self,
        vit: VisionTransformer,
        learner: PromptLearner,
        num_classes: int,
        teacher: PromptedViT,
        heads: int = 1,
        mapping: bool = True,
    ) -> None:
        super().__init__(vit, learner, num_classes)
        widths = (vit.embed_dim, teacher.vit.embed_dim)
        self.kd_head = zero_head(vit.embed_dim, num_classes)
        self.mapping = MappedPrompts(learner, teacher.learner, widths, heads) if mapping else None
        if self.mapping:  # without it: the KD head alone (an ablation of the mapping)
            learner.source = self.mapping.table
        self.student_logits = self.kd_logits = torch.zeros(())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feature = self.features(images)
        self.student_logits, self.kd_logits = self.head(feature), self.kd_head(feature)
        logits = (self.student_logits + self.kd_logits) / 2
        return logits if self.training else current_only(logits, self.seen)

    @torch.no_grad()
    def fold(self) -> None:
        """Make the current task's mapped prompts the learner's own (call when a task ends),
        and the mapping a no-op again: prompts every task trains (L2P's pool, DualPrompt's
        G-prompt) would otherwise get the folded delta a second time at the next task."""
        if self.mapping is None:
            return
        for name in type(self.learner).TABLES:
            getattr(self.learner, name).add_(self.mapping.delta(name))
        nn.init.zeros_(self.mapping.attention.out_proj.weight)
        nn.init.zeros_(self.mapping.attention.out_proj.bias)

    def materialize(self) -> PromptedViT:
        """The deployable student: a prompted ViT with the two heads averaged into one and no
        teacher (call after the last task's `fold`)."""
        self.learner.source = None
        plain = PromptedViT(self.vit, self.learner, self.head.out_features)
        with torch.no_grad():
            plain.head.weight.copy_((self.head.weight + self.kd_head.weight) / 2)
            plain.head.bias.copy_((self.head.bias + self.kd_head.bias) / 2)
        plain.seen, plain.task = self.seen, self.task
        return plain.eval()


def cdl_loss(
    teacher: PromptedViT,
    classes: list[int],
    alpha: float,
    temperature: float,
    feature_weight: float = 0.0,
    kd_classes: list[int] | None = None,
) -> LossFn:
    """(1 - alpha) CE of the student head on the current classes + alpha T^2 KL(teacher || KD
    head) on `kd_classes` (by default the current ones: the paper's), plus the learner's key
    loss (and FitNets' feature loss if weighted)."""
    teacher.eval().requires_grad_(False)
    index = list(classes if kd_classes is None else kd_classes)
    frozen = frozen_outputs(teacher)

    def loss(model: CDLStudent, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ft, zt = frozen(x)
        model(x)
        ce = masked_ce(model.student_logits, y, classes)
        kd = kl_logits(model.kd_logits[:, index], zt[:, index], temperature)
        out = (1 - alpha) * ce + alpha * kd + model.key_loss
        return out + feature_weight * feature_hint(model, ft) if feature_weight else out

    return loss
