"""ARC, Adapter Re-Composing: shared low-rank projections re-composed per layer.

Per position p (attention, MLP) one matrix U_p (D x r) is shared by all layers; each layer has a
scale vector s (r) and a bias b (D). On the LayerNorm output h, before the sub-block:
    h' = h + dropout(h U diag(s)) Uᵀ + b
Merging is exact and linear: A = I + U diag(s) Uᵀ (symmetric), folded into the next Linear
(qkv or fc1): W' = W A, b' = W b_l + b. It cannot go into the LayerNorm (A is a full matrix).
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pipeline.adapters.base import Method

# position -> (LayerNorm that feeds it, sub-module, Linear that consumes the LayerNorm output)
POSITIONS = {"att": ("norm1", "attn", "qkv"), "mlp": ("norm2", "mlp", "fc1")}


class ARCShared(nn.Module):
    """The projections shared by every layer, one per position."""

    def __init__(self, dim: int, rank: int, positions: list[str]) -> None:
        super().__init__()
        for p in positions:
            u = nn.Parameter(torch.empty(dim, rank))
            nn.init.xavier_uniform_(u)
            self.register_parameter(f"U_{p}", u)


class ARCNorm(nn.Module):
    """A block's LayerNorm followed by its layer's re-composed adapter."""

    def __init__(
        self, norm: nn.LayerNorm, shared: ARCShared, position: str, rank: int, dropout: float
    ) -> None:
        super().__init__()
        self.norm = norm
        self.position = position
        dim = norm.normalized_shape[0]
        self.scale = nn.Parameter(torch.zeros(rank))
        if position == "mlp":  # the official code starts the MLP scale away from zero
            bound = math.sqrt(6 / (1 + rank))
            nn.init.uniform_(self.scale, -bound, bound)
        self.bias = nn.Parameter(torch.zeros(dim))
        self.dropout = nn.Dropout(dropout)
        # a plain attribute, not a sub-module: U is stored once, on the model, not per layer
        object.__setattr__(self, "_shared", shared)

    @property
    def U(self) -> torch.Tensor:
        return getattr(self._shared, f"U_{self.position}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return h + self.dropout((h @ self.U) * self.scale) @ self.U.T + self.bias

    def recomposition(self) -> torch.Tensor:
        """A = I + U diag(s) Uᵀ, in float64."""
        u = self.U.double()
        eye = torch.eye(u.shape[0], dtype=torch.float64, device=u.device)
        return eye + (u * self.scale.double()) @ u.T


def default_rank(dim: int) -> int:
    """The official 50 (ViT-B) where the width allows it, else half the width."""
    return min(50, dim // 2)


def inject(
    model: VisionTransformer, rank: int | None, dropout: float, positions: list[str]
) -> None:
    unknown = sorted(set(positions) - set(POSITIONS))
    if unknown or not positions:
        raise ValueError(f"positions must be among {list(POSITIONS)}, got {positions}")
    rank = rank or default_rank(model.embed_dim)
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    for block in model.blocks:
        for p in positions:
            _, sub, linear_name = POSITIONS[p]
            if getattr(getattr(block, sub), linear_name).bias is None:
                raise ValueError(f"ARC folds its bias into {linear_name}, which has none here")
    model.arc_shared = ARCShared(model.embed_dim, rank, positions)
    for block in model.blocks:
        for p in positions:
            norm_name = POSITIONS[p][0]
            setattr(
                block,
                norm_name,
                ARCNorm(getattr(block, norm_name), model.arc_shared, p, rank, dropout),
            )


def merge(model: VisionTransformer) -> None:
    for block in model.blocks:
        for norm_name, sub, linear_name in POSITIONS.values():
            wrapped = getattr(block, norm_name)
            if not isinstance(wrapped, ARCNorm):
                continue
            linear = getattr(getattr(block, sub), linear_name)
            w = linear.weight.double()
            with torch.no_grad():
                bias = linear.bias.double() + w @ wrapped.bias.double()
                linear.weight.copy_((w @ wrapped.recomposition()).to(linear.weight))
                linear.bias.copy_(bias.to(linear.bias))
            setattr(block, norm_name, wrapped.norm)
    del model.arc_shared


def _method(name: str, positions: list[str]) -> Method:
    return Method(
        name=name,
        inject=inject,
        merge=merge,
        # rank None: min(50, embed_dim // 2), the official 50 on ViT-B
        defaults={"rank": None, "dropout": 0.1, "positions": positions},
    )


METHOD = _method("arc", ["att", "mlp"])
METHOD_ATT = _method("arc_att", ["att"])
