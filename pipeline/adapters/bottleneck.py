"""iDAT's bottleneck adapter: x <- x + W2 GELU(W1 x + b1) + b2, width 4 by default.

Sequential after each block (official), or AdaptFormer's placement: parallel to the MLP,
reading the residual stream before the MLP's LayerNorm, scaled by 0.1. The GELU makes it
nonlinear: it cannot be merged, so models with it are exported and served unmerged.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pipeline.adapters.base import Method


class Bottleneck(nn.Module):
    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, width)
        self.act = nn.GELU()
        self.up = nn.Linear(width, dim)
        # the official model re-initialises every Linear, adapters included (JCruan519/iDAT's
        # `_init_weights`): a fresh adapter then moves the logits by ~0.07, not ~1.5
        for linear in (self.down, self.up):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class SequentialAdapter(nn.Module):
    """A block followed by its adapter: out = block(x); out + adapter(out)."""

    def __init__(self, block: nn.Module, width: int, dim: int) -> None:
        super().__init__()
        self.block = block
        self.adapter = Bottleneck(dim, width)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        out = self.block(x, **kwargs)
        return out + self.adapter(out)


class ParallelAdapter(nn.Module):
    """AdaptFormer: beside the MLP branch, reading the residual stream x (before norm2):
    x + mlp(norm2(x)) + scale * adapter(x). The attention half is timm's Block as is."""

    def __init__(self, block: nn.Module, width: int, dim: int, scale: float) -> None:
        super().__init__()
        self.block = block
        self.adapter = Bottleneck(dim, width)
        self.scale = scale

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        b = self.block
        x = x + b.drop_path1(b.ls1(b.attn(b.norm1(x), **kwargs)))
        return x + b.drop_path2(b.ls2(b.mlp(b.norm2(x)))) + self.scale * self.adapter(x)


def inject(model: VisionTransformer, width: int, placement: str, scale: float) -> None:
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    dim = model.embed_dim
    if placement == "sequential":
        for i, block in enumerate(model.blocks):
            model.blocks[i] = SequentialAdapter(block, width, dim)
    elif placement == "parallel":
        for i, block in enumerate(model.blocks):
            model.blocks[i] = ParallelAdapter(block, width, dim, scale)
    else:
        raise ValueError(f"placement must be sequential or parallel, got {placement!r}")


METHOD = Method(
    name="adapter",
    inject=inject,
    merge=None,
    defaults={"width": 4, "placement": "sequential", "scale": 0.1},
)
