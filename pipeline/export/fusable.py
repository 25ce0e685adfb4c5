"""A ViT rewritten, weights unchanged, into the graph layout ONNX Runtime's optimiser fuses.

ONNX Runtime's transformer optimiser (onnxruntime.transformers, model_type "vit") fuses
attention only when it finds separate q, k and v MatMul+Add projections of one LayerNorm
output, each reshaped and transposed, then MatMul -> Div -> Softmax -> MatMul. timm computes
q, k and v with one `qkv` Linear and scaled_dot_product_attention, which it never matches.
It also anchors on a residual Add whose *first* input is the attention branch: timm's
`x + branch` order leaves block 0 (whose skip input is the position-embedding Add) unfused.
The rewrite computes the same function; parity with torch is checked after export.
"""

from __future__ import annotations

import copy
import math

import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block
from torch import nn


class FusableAttention(nn.Module):
    """timm's Attention with q, k, v as three Linears and the attention written out."""

    def __init__(self, attn: Attention) -> None:
        super().__init__()
        qkv = attn.qkv
        dim, width = qkv.in_features, attn.num_heads * attn.head_dim
        self.num_heads, self.head_dim = attn.num_heads, attn.head_dim
        self.q, self.k, self.v = (
            nn.Linear(dim, width, bias=qkv.bias is not None) for _ in range(3)
        )
        with torch.no_grad():
            for i, linear in enumerate((self.q, self.k, self.v)):
                linear.weight.copy_(qkv.weight[i * width : (i + 1) * width])
                if qkv.bias is not None:
                    linear.bias.copy_(qkv.bias[i * width : (i + 1) * width])
        self.q_norm, self.k_norm, self.norm, self.proj = (
            attn.q_norm,
            attn.k_norm,
            attn.norm,
            attn.proj,
        )

    def forward(self, x: torch.Tensor, **_: object) -> torch.Tensor:
        b, n, _ = x.shape
        heads = (b, n, self.num_heads, self.head_dim)
        q = self.q_norm(self.q(x).reshape(heads).transpose(1, 2))
        k = self.k_norm(self.k(x).reshape(heads).transpose(1, 2)).transpose(2, 3)
        v = self.v(x).reshape(heads).transpose(1, 2)
        scores = (q @ k) / math.sqrt(self.head_dim)
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(self.norm(out))


class FusableBlock(nn.Module):
    """timm's pre-norm Block (eval: no drop-path) with each residual Add written branch first."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.norm1, self.attn, self.ls1 = block.norm1, block.attn, block.ls1
        self.norm2, self.mlp, self.ls2 = block.norm2, block.mlp, block.ls2

    def forward(self, x: torch.Tensor, **_: object) -> torch.Tensor:
        x = self.ls1(self.attn(self.norm1(x))) + x
        return self.ls2(self.mlp(self.norm2(x))) + x


def _rewritable(attn: nn.Module) -> bool:
    return (
        type(attn) is Attention
        and type(attn.qkv) is nn.Linear  # adapters wrap it: leave unmerged models as they are
        and attn.gate is None
    )


def fusable(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of `model` (eval) with every plain timm attention and block rewritten; also how
    many attention modules were rewritten (0 for models this does not apply to)."""
    model = copy.deepcopy(model).eval()
    rewritten = 0
    for block_list in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i, block in enumerate(block_list):
            if not hasattr(block, "attn") or not _rewritable(block.attn):
                continue
            block.attn = FusableAttention(block.attn)
            rewritten += 1
            if type(block) is Block:
                block_list[i] = FusableBlock(block)
    return model, rewritten
