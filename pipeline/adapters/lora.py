"""LoRA: W' = W + (alpha / r) B A on chosen linears (PEFT's conventions: A kaiming, B zero)."""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pipeline.adapters.base import Method, block_linears


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """Computed in float64 so the merge adds no rounding beyond the final cast."""
        return (self.lora_B.double() @ self.lora_A.double()) * self.scaling


def inject(
    model: VisionTransformer, rank: int, alpha: float, targets: list[str], dropout: float
) -> None:
    if rank < 1:
        raise ValueError(f"lora rank must be >= 1, got {rank}")
    for parent, attr in block_linears(model, targets):
        setattr(parent, attr, LoRALinear(getattr(parent, attr), rank, alpha, dropout))


def merge(model: VisionTransformer) -> None:
    for parent, attr in block_linears(model, ["qkv", "proj", "fc1", "fc2"]):
        layer = getattr(parent, attr)
        if isinstance(layer, LoRALinear):
            base = layer.base
            with torch.no_grad():
                base.weight.copy_((base.weight.double() + layer.delta_weight()).to(base.weight))
            setattr(parent, attr, base)


METHOD = Method(
    name="lora",
    inject=inject,
    merge=merge,
    defaults={"rank": 8, "alpha": 8.0, "targets": ["qkv", "proj", "fc1", "fc2"], "dropout": 0.0},
)
