"""Prefix tuning on a frozen timm ViT: a prompt of length Lp is split in half, one half
prepended to each block's keys, the other to its values. The query pass (the same frozen ViT,
no prompts) gives the CLS feature that selects the prompts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block, VisionTransformer

# layer -> (keys, values), each (batch, length, width)
Prefixes = dict[int, tuple[torch.Tensor, torch.Tensor]]


def split_prompt(prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, Lp, D) -> keys and values of length Lp/2 each, as prefix tuning splits it."""
    if prompt.shape[1] % 2:
        raise ValueError(f"a prefix prompt needs an even length, got {prompt.shape[1]}")
    half = prompt.shape[1] // 2
    return prompt[:, :half], prompt[:, half:]


def prefix_attention(
    attn: Attention, x: torch.Tensor, prefix: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """timm's Attention with `prefix` keys and values prepended (length 0 or None: unchanged)."""
    b, n, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if prefix is not None and prefix[0].shape[1]:
        pk, pv = (p.reshape(b, -1, heads, head_dim).transpose(1, 2) for p in prefix)
        k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
    out = F.scaled_dot_product_attention(q, k, v)
    out = attn.norm(out.transpose(1, 2).reshape(b, n, heads * head_dim))
    return attn.proj_drop(attn.proj(out))


def prefix_block(
    block: Block, x: torch.Tensor, prefix: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    x = x + block.drop_path1(block.ls1(prefix_attention(block.attn, block.norm1(x), prefix)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def prompted_features(
    vit: VisionTransformer, images: torch.Tensor, prefixes: Prefixes | None = None
) -> torch.Tensor:
    """The CLS feature (after the final norm, before the head) with prompts in their layers;
    without prompts it is the query pass."""
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
    for i, block in enumerate(vit.blocks):
        x = prefix_block(block, x, (prefixes or {}).get(i))
    return vit.norm(x)[:, 0]
