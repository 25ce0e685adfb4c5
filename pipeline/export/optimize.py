"""ONNX Runtime's transformer optimiser on an exported ViT: fused attention, GELU and norms."""

from __future__ import annotations

from pathlib import Path

from timm.layers import Attention
from torch import nn

from pipeline.io import atomic_path

# The fused operators reported for a ViT; the optimiser's other counters are for other models.
FUSED_OPS = ("Attention", "BiasGelu", "SkipLayerNormalization", "LayerNormalization")


def attention_shape(model: nn.Module) -> tuple[int, int]:
    """(num_heads, hidden size) of the model's timm attention: what the optimiser must be told."""
    attn = next(m for m in model.modules() if isinstance(m, Attention))
    return attn.num_heads, attn.num_heads * attn.head_dim


def optimize_vit(
    src: str | Path,
    dst: str | Path,
    num_heads: int,
    hidden_size: int,
    skip_layer_norm: bool = True,
) -> dict[str, int]:
    """Write the optimised graph of `src` to `dst`; return the count of each fused operator.

    `skip_layer_norm=False` keeps residual Add + LayerNormalization apart: on CPU, ONNX Runtime's
    SkipLayerNormalization kernel is slower than the pair (see the reference benchmark)."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("vit")
    options.enable_skip_layer_norm = skip_layer_norm
    options.enable_bias_skip_layer_norm = skip_layer_norm
    model = optimizer.optimize_model(
        str(src),
        model_type="vit",
        num_heads=num_heads,
        hidden_size=hidden_size,
        optimization_options=options,
    )
    # The exporter's value_info no longer fits the fused graph, and the quantiser trusts it.
    del model.model.graph.value_info[:]
    with atomic_path(dst) as tmp:
        model.save_model_to_file(str(tmp))
    stats = model.get_fused_operator_statistics()
    return {op: int(stats.get(op, 0)) for op in FUSED_OPS}
