"""The prompt learners: from the query feature (CLS of the frozen ViT's plain pass) to the
prefixes of the prompted pass, and the key loss that trains the selection.

Sizes default to the papers' (METHODS.md) on ViT-B; `layers` are block indices of a 12-block
ViT and scale to the model's depth (see `scale_layers`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.continual.prefix import Prefixes, split_prompt


def scale_layers(layers: list[int], depth: int, reference: int = 12) -> list[int]:
    """Block indices chosen on a `reference`-deep ViT, mapped onto one `depth` deep (same
    relative position, duplicates dropped, order kept)."""
    out = [min(depth - 1, i * depth // reference) for i in layers]
    return list(dict.fromkeys(out))


def _uniform(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-1, 1))


def _merge(into: Prefixes, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Add a layer's prefix; two prompts in one layer are concatenated along their length."""
    if layer in into:
        k, v = into[layer]
        keys, values = torch.cat([k, keys], 1), torch.cat([v, values], 1)
    into[layer] = (keys, values)


class PromptLearner(nn.Module, ABC):
    """select(query, task) -> (prefixes, key loss); `task` is the training task's index (None
    at inference). `begin_task(t)` is called before task t trains.

    `TABLES` names the prompt tensors (..., length, width). A learner reads them through
    `table(name)`, so CDL-Prompt can hand it prompts mapped from a teacher's instead."""

    TABLES: tuple[str, ...] = ()
    source: Callable[[str], torch.Tensor] | None = None

    task = 0

    def begin_task(self, task: int) -> None:
        self.task = task

    def table(self, name: str) -> torch.Tensor:
        return self.source(name) if self.source is not None else getattr(self, name)

    def fresh(self, name: str) -> torch.Tensor:
        """Which prompts of table `name` (a mask over all but its last two dims) the current
        task trains; by default all of them."""
        return torch.ones(getattr(self, name).shape[:-2], dtype=torch.bool)

    @abstractmethod
    def select(self, query: torch.Tensor, task: int | None) -> tuple[Prefixes, torch.Tensor]:
        """The prefixes per layer for a batch of queries, and the key loss."""


class L2P(PromptLearner):
    """A pool of prompts with keys; the top-k keys by cosine with the query choose the prompts,
    concatenated along their length, in `layers`; key loss 1 - cos pulls the chosen keys."""

    TABLES = ("prompts",)

    def __init__(
        self, width: int, pool: int = 30, length: int = 20, top_k: int = 5, layers=(0,)
    ) -> None:
        super().__init__()
        self.top_k, self.layers = top_k, list(layers)
        self.keys = _uniform(pool, width)
        self.prompts = _uniform(len(self.layers), pool, length, width)

    def select(self, query, task=None):
        cos = F.normalize(query, dim=-1) @ F.normalize(self.keys, dim=-1).T  # (B, pool)
        score, index = cos.topk(self.top_k, dim=1)
        loss = (1 - score).sum(1).mean()
        prefixes: Prefixes = {}
        b, width = query.shape
        for j, layer in enumerate(self.layers):
            chosen = self.table("prompts")[j][index]  # (B, k, Lp, D)
            keys, values = split_prompt(chosen.flatten(0, 1))  # each prompt split in half
            _merge(prefixes, layer, keys.reshape(b, -1, width), values.reshape(b, -1, width))
        return prefixes, loss


class DualPrompt(PromptLearner):
    """A general G-prompt shared by all tasks in `g_layers`, and one expert E-prompt per task
    with a key in `e_layers`: training uses the task's own E-prompt and pulls its key to the
    query (1 - cos); inference takes the E-prompt of the key nearest the query."""

    TABLES = ("g", "e")

    def __init__(
        self,
        width: int,
        tasks: int,
        g_length: int = 6,
        g_layers=(0, 1),
        e_length: int = 20,
        e_layers=(2, 3, 4),
    ) -> None:
        super().__init__()
        self.g_layers, self.e_layers = list(g_layers), list(e_layers)
        self.g = _uniform(len(self.g_layers), g_length, width)
        self.e_keys = _uniform(tasks, width)
        self.e = _uniform(len(self.e_layers), tasks, e_length, width)

    def fresh(self, name: str) -> torch.Tensor:
        mask = super().fresh(name)
        if name == "e":  # only the current task's expert prompt trains
            mask[:] = False
            mask[:, self.task] = True
        return mask

    def select(self, query, task=None):
        cos = F.normalize(query, dim=-1) @ F.normalize(self.e_keys, dim=-1).T  # (B, tasks)
        if task is None:
            index, loss = cos.argmax(1), query.new_zeros(())
        else:
            index = torch.full_like(cos[:, 0], task, dtype=torch.long)
            loss = (1 - cos[:, task]).mean()
        b = query.shape[0]
        prefixes: Prefixes = {}
        for j, layer in enumerate(self.g_layers):
            _merge(prefixes, layer, *split_prompt(self.table("g")[j].expand(b, -1, -1)))
        for j, layer in enumerate(self.e_layers):
            _merge(prefixes, layer, *split_prompt(self.table("e")[j][index]))
        return prefixes, loss


class CodaPrompt(PromptLearner):
    """Each layer's prompt is a weighted sum of components, P = sum_m a_m P_m with
    a_m = cos(q * A_m, K_m) (an attention vector A_m per component). Each task adds its share of
    the components; those of earlier tasks stay frozen (detached), later ones are not used yet."""

    TABLES = ("components",)

    def __init__(
        self, width: int, tasks: int, components: int = 100, length: int = 8, layers=(0, 1, 2, 3, 4)
    ) -> None:
        super().__init__()
        if components < tasks:
            raise ValueError(f"CODA-Prompt needs at least one component per task ({tasks})")
        self.layers = list(layers)
        self.per_task = components // tasks
        n = self.per_task * tasks
        self.keys = _uniform(len(self.layers), n, width)
        self.attention = _uniform(len(self.layers), n, width)
        self.components = _uniform(len(self.layers), n, length, width)

    def fresh(self, name: str) -> torch.Tensor:
        mask = torch.zeros(getattr(self, name).shape[:-2], dtype=torch.bool)
        mask[:, self.task * self.per_task : (self.task + 1) * self.per_task] = True
        return mask

    def _active(self, table: torch.Tensor) -> torch.Tensor:
        start, end = self.task * self.per_task, (self.task + 1) * self.per_task
        return torch.cat([table[:start].detach(), table[start:end]])

    def select(self, query, task=None):
        prefixes: Prefixes = {}
        for j, layer in enumerate(self.layers):
            keys, attention, parts = (
                self._active(t[j]) for t in (self.keys, self.attention, self.table("components"))
            )
            weighted = query[:, None, :] * attention[None]  # (B, m, D)
            alpha = F.cosine_similarity(weighted, keys[None], dim=-1)  # (B, m)
            prompt = torch.einsum("bm,mld->bld", alpha, parts)
            _merge(prefixes, layer, *split_prompt(prompt))
        return prefixes, query.new_zeros(())
