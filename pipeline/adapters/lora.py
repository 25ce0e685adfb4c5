"""LoRA: W' = W + scale · B A on chosen linears (PEFT's conventions: A kaiming, B zero).

`lora` is the common baseline (scale alpha / r). `lora_qkv` is WeCoLoRA's enhanced LoRA: separate
low-rank factors for q, k and v inside the fused qkv, LoRA on every other linear too, ΔW = B A
with no scaling and no dropout.
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pipeline.adapters.base import BLOCK_LINEARS, Method, block_linears


def _factors(rank: int, in_features: int, out_features: int) -> tuple[nn.Parameter, nn.Parameter]:
    a = nn.Parameter(torch.empty(rank, in_features))
    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    return a, nn.Parameter(torch.zeros(out_features, rank))


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.lora_A, self.lora_B = _factors(rank, base.in_features, base.out_features)
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """Computed in float64 so the merge adds no rounding beyond the final cast."""
        return (self.lora_B.double() @ self.lora_A.double()) * self.scaling


class LoRAQKV(nn.Module):
    """Separate factors for each of q, k, v (those in `parts`) inside a fused qkv linear."""

    def __init__(self, base: nn.Linear, rank: int, parts: list[str]) -> None:
        super().__init__()
        self.base = base
        self.dim = base.out_features // 3
        self.parts = parts
        for p in parts:
            a, b = _factors(rank, base.in_features, self.dim)
            self.register_parameter(f"lora_A_{p}", a)
            self.register_parameter(f"lora_B_{p}", b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        deltas = [x @ self._a(p).T @ self._b(p).T if p in self.parts else None for p in "qkv"]
        zero = torch.zeros_like(out[..., : self.dim])
        return out + torch.cat([zero if d is None else d for d in deltas], dim=-1)

    def _a(self, part: str) -> torch.Tensor:
        return getattr(self, f"lora_A_{part}")

    def _b(self, part: str) -> torch.Tensor:
        return getattr(self, f"lora_B_{part}")

    def delta_weight(self) -> torch.Tensor:
        w = self.base.weight
        rows = [
            self._b(p).double() @ self._a(p).double()
            if p in self.parts
            else torch.zeros(self.dim, w.shape[1], dtype=torch.float64, device=w.device)
            for p in "qkv"
        ]
        return torch.cat(rows, dim=0)


def inject(
    model: VisionTransformer, rank: int, alpha: float, targets: list[str], dropout: float
) -> None:
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    for parent, attr in block_linears(model, targets):
        setattr(parent, attr, LoRALinear(getattr(parent, attr), rank, alpha, dropout))


def default_qkv_rank(dim: int) -> int:
    """WeCoLoRA's official 128 where the width allows it, else half the width."""
    return min(128, dim // 2)


def inject_qkv(
    model: VisionTransformer, rank: int | None, parts: list[str], targets: list[str]
) -> None:
    rank = rank or default_qkv_rank(model.embed_dim)
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if not parts or set(parts) - set("qkv"):
        raise ValueError(f"parts must be among q, k, v, got {parts}")
    for parent, attr in block_linears(model, targets):
        base = getattr(parent, attr)
        if attr == "qkv":
            layer = LoRAQKV(base, rank, parts)
        else:  # alpha = rank: scale 1, so ΔW = B A as WeCoLoRA's LoRA
            layer = LoRALinear(base, rank, alpha=rank, dropout=0.0)
        setattr(parent, attr, layer)


def merge(model: VisionTransformer) -> None:
    for parent, attr in block_linears(model, list(BLOCK_LINEARS)):
        layer = getattr(parent, attr)
        if isinstance(layer, (LoRALinear, LoRAQKV)):
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

METHOD_QKV = Method(
    name="lora_qkv",
    inject=inject_qkv,
    merge=merge,
    # rank None: min(128, embed_dim // 2), the official 128 on ViT-B
    defaults={"rank": None, "parts": ["q", "k", "v"], "targets": ["qkv", "proj", "fc1", "fc2"]},
)

# Plain q/v LoRA (no scaling), WeCoLoRA's ablation baseline for its enhanced LoRA.
METHOD_QV = Method(
    name="lora_qv",
    inject=inject_qkv,
    merge=merge,
    defaults={"rank": None, "parts": ["q", "v"], "targets": ["qkv"]},
)
