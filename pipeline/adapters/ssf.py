"""SSF: a learned scale and shift after each linear, LayerNorm and the patch embedding.

y = γ ⊙ f(x) + β with γ ~ N(1, 0.02), β ~ N(0, 0.02) (the official initialisation). Merging
folds it into the layer it follows: weight rows (or LayerNorm affine) times γ, bias γ ⊙ b + β.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pipeline.adapters.base import BLOCK_LINEARS, Method, block_linears


class SSF(nn.Module):
    def __init__(self, layer: nn.Module, channels: int, channel_dim: int = -1) -> None:
        super().__init__()
        self.layer = layer
        self.channel_dim = channel_dim
        self.scale = nn.Parameter(torch.empty(channels).normal_(1.0, 0.02))
        self.shift = nn.Parameter(torch.empty(channels).normal_(0.0, 0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        shape = [1] * y.dim()
        shape[self.channel_dim] = -1
        return y * self.scale.view(shape) + self.shift.view(shape)

    def fold(self) -> nn.Module:
        """The wrapped layer with γ and β folded into its weight and bias (float64 math)."""
        layer = self.layer
        if layer.bias is None:
            raise ValueError(f"cannot fold SSF into a {type(layer).__name__} without bias")
        g, b = self.scale.double(), self.shift.double()
        with torch.no_grad():
            w = layer.weight.double()
            layer.weight.copy_((w * g.view(-1, *[1] * (w.dim() - 1))).to(layer.weight))
            layer.bias.copy_((layer.bias.double() * g + b).to(layer.bias))
        return layer


def _wrap_targets(model: VisionTransformer):
    """(parent, attribute) of every layer SSF follows."""
    yield model.patch_embed, "proj"
    yield from block_linears(model, list(BLOCK_LINEARS))
    for block in model.blocks:
        yield block, "norm1"
        yield block, "norm2"
    yield model, "norm"


def inject(model: VisionTransformer) -> None:
    for parent, attr in list(_wrap_targets(model)):
        layer = getattr(parent, attr)
        if isinstance(layer, nn.Conv2d):  # the patch embedding: channels on dim 1 (NCHW)
            wrapped = SSF(layer, layer.out_channels, channel_dim=1)
        elif isinstance(layer, nn.Linear):
            wrapped = SSF(layer, layer.out_features)
        elif isinstance(layer, nn.LayerNorm):
            wrapped = SSF(layer, layer.normalized_shape[0])
        else:
            continue  # e.g. an Identity norm in a model configured without one
        if layer.bias is None:
            raise ValueError(f"SSF folds into the bias of {attr}, which has none here")
        setattr(parent, attr, wrapped)


def merge(model: VisionTransformer) -> None:
    for parent, attr in list(_wrap_targets(model)):
        layer = getattr(parent, attr)
        if isinstance(layer, SSF):
            setattr(parent, attr, layer.fold())


METHOD = Method(name="ssf", inject=inject, merge=merge, defaults={})
