"""What every adapter module provides, and helpers to find the linears of timm ViT blocks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from timm.models.vision_transformer import VisionTransformer
from torch import nn

# Where the four linears of a timm ViT block live: name -> (sub-module, attribute).
BLOCK_LINEARS = {
    "qkv": ("attn", "qkv"),
    "proj": ("attn", "proj"),
    "fc1": ("mlp", "fc1"),
    "fc2": ("mlp", "fc2"),
}


@dataclass(frozen=True)
class Method:
    """One adapter method: `inject` adds modules to a frozen ViT (their params train), `merge`
    folds them back in place so only timm's own modules remain (None: not mergeable)."""

    name: str
    inject: Callable[..., None]
    merge: Callable[[VisionTransformer], None] | None
    defaults: dict[str, Any]
    adds_modules: bool = True  # False for the linear probe: nothing to merge or compare


def block_linears(model: VisionTransformer, targets: list[str]) -> Iterator[tuple[nn.Module, str]]:
    """Yield (parent module, attribute) for each target linear of each block."""
    unknown = sorted(set(targets) - set(BLOCK_LINEARS))
    if unknown:
        raise ValueError(f"unknown target module(s) {unknown}; choose among {list(BLOCK_LINEARS)}")
    for block in model.blocks:
        for name in targets:
            sub, attr = BLOCK_LINEARS[name]
            yield getattr(block, sub), attr
