"""Consolidator: grouped-connection branches beside every linear, consolidated into it.

Each of qkv, proj, fc1, fc2 becomes y = W0 x + b0 + Σ_b DropPath_b(G_b(S_g x) + c_b), where G_b
is a grouped 1x1 connection (block-diagonal: g blocks of (out/g) x (in/g)) and S_g an optional
channel shuffle. W0 stays frozen; b0, every LayerNorm and the branches train.
Two-stage consolidation: (a) storage keeps only the block-diagonal entries and biases (the
trainable state); (b) loading folds them into a plain Linear: W = W0 + Σ_b P_b(BlockDiag(G_b)),
b = b0 + Σ_b c_b, exact.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pipeline.adapters.base import BLOCK_LINEARS, Method, block_linears


def shuffle_perm(channels: int, groups: int) -> torch.Tensor:
    """Index of channel shuffle: reshape (g, C/g), transpose, flatten; x_shuffled = x[perm]."""
    return torch.arange(channels).view(groups, channels // groups).T.reshape(-1)


class GroupedBranch(nn.Module):
    def __init__(
        self, in_features: int, out_features: int, groups: int, shuffle: bool, drop: float
    ) -> None:
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(
                f"{groups} groups do not divide a {in_features} -> {out_features} linear"
            )
        self.groups = groups
        self.weight = nn.Parameter(
            torch.empty(groups, out_features // groups, in_features // groups).uniform_(-1e-3, 1e-3)
        )
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-1e-3, 1e-3))
        self.drop = drop
        perm = shuffle_perm(in_features, groups) if shuffle else torch.arange(in_features)
        self.register_buffer("perm", perm, persistent=False)
        self.shuffle = shuffle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shuffle:
            x = x[..., self.perm]
        xg = x.unflatten(-1, (self.groups, -1))
        y = torch.einsum("...gi,goi->...go", xg, self.weight).flatten(-2) + self.bias
        if self.training and self.drop > 0:  # drop the whole branch per sample
            keep = torch.rand((y.shape[0],) + (1,) * (y.dim() - 1), device=y.device) >= self.drop
            y = y * keep.to(y.dtype) / (1 - self.drop)
        return y

    def delta(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ΔW, Δb) of this branch as a dense (out, in) matrix, in float64."""
        dense = torch.block_diag(*self.weight.double())
        delta = torch.zeros_like(dense)
        delta[:, self.perm] = dense  # y = BD x[perm]
        return delta, self.bias.double()


class ConsolidatorLinear(nn.Module):
    def __init__(self, base: nn.Linear, groups: list[int], shuffle: bool, drop: float) -> None:
        super().__init__()
        self.base = base
        self.branches = nn.ModuleList(
            GroupedBranch(base.in_features, base.out_features, g, shuffle, drop) for g in groups
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + sum(b(x) for b in self.branches)


def default_groups(dim: int) -> list[int]:
    """One branch of D/2 groups: the released 384 on ViT-B (D = 768), and it divides every
    linear of a standard block (D, 3D, 4D)."""
    return [max(1, dim // 2)]


def inject(
    model: VisionTransformer, groups: list[int] | None, shuffle: bool, drop_path: float
) -> None:
    groups = groups or default_groups(model.embed_dim)
    for parent, attr in block_linears(model, list(BLOCK_LINEARS)):
        base = getattr(parent, attr)
        if base.bias is None:
            raise ValueError(f"Consolidator trains the bias of {attr}, which has none here")
        setattr(parent, attr, ConsolidatorLinear(base, groups, shuffle, drop_path))
        base.bias.requires_grad_(True)
    for module in model.modules():  # every LayerNorm trains, the final one included
        if isinstance(module, nn.LayerNorm):
            module.requires_grad_(True)


def merge(model: VisionTransformer) -> None:
    for parent, attr in block_linears(model, list(BLOCK_LINEARS)):
        layer = getattr(parent, attr)
        if not isinstance(layer, ConsolidatorLinear):
            continue
        base = layer.base
        with torch.no_grad():
            weight, bias = base.weight.double(), base.bias.double()
            for branch in layer.branches:
                dw, db = branch.delta()
                weight, bias = weight + dw, bias + db
            base.weight.copy_(weight.to(base.weight))
            base.bias.copy_(bias.to(base.bias))
        setattr(parent, attr, base)


METHOD = Method(
    name="consolidator",
    inject=inject,
    merge=merge,
    # groups None: [embed_dim // 2], the released 384 on ViT-B; drop_path per branch and sample
    defaults={"groups": None, "shuffle": False, "drop_path": 0.0},
)
