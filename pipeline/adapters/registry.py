"""The one registry of adapter methods and the surface every stage uses."""

from __future__ import annotations

import copy
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from pipeline import PipelineError
from pipeline.adapters import arc, bottleneck, consolidator, linear, lora, ssf
from pipeline.adapters.base import Method

_REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        lora.METHOD,
        lora.METHOD_QKV,
        lora.METHOD_QV,
        arc.METHOD,
        arc.METHOD_ATT,
        consolidator.METHOD,
        ssf.METHOD,
        bottleneck.METHOD,
        linear.METHOD,
    )
}
METHODS: tuple[str, ...] = tuple(_REGISTRY)


def _method(name: str) -> Method:
    if name not in _REGISTRY:
        raise PipelineError(f"unknown adapter method '{name}' (known: {', '.join(METHODS)})")
    return _REGISTRY[name]


def adapter_spec(model: torch.nn.Module) -> dict[str, Any]:
    """{"method", "options"} of an injected model."""
    spec = getattr(model, "adapter_spec", None)
    if spec is None:
        raise PipelineError("model has no adapters (call pipeline.adapters.inject first)")
    return spec


def check_options(method: str, options: dict[str, Any]) -> None:
    """An unknown method or option is an error naming it (checked when params are read)."""
    m = _method(method)
    unknown = sorted(set(options) - set(m.defaults))
    if unknown:
        raise PipelineError(
            f"adapters.{method}: unknown option(s) {unknown} (known: {sorted(m.defaults)})"
        )


def inject(model: VisionTransformer, method: str, **options: Any) -> VisionTransformer:
    """Freeze the backbone, add `method`'s adapters (trainable) and keep the head trainable.

    Options not given take the method's defaults; an unknown option is an error.
    """
    check_options(method, options)
    m = _method(method)
    opts = {**copy.deepcopy(m.defaults), **options}
    model.requires_grad_(False)
    try:
        m.inject(model, **opts)
    except ValueError as e:
        raise PipelineError(f"adapters.{method}: {e}") from e
    model.get_classifier().requires_grad_(True)
    model.adapter_spec = {"method": method, "options": opts}
    return model


def is_mergeable(method: str) -> bool:
    return _method(method).merge is not None


def has_adapters(method: str) -> bool:
    """False for methods that add no modules (the linear probe): merging changes nothing."""
    return _method(method).adds_modules


def has_merged_form(method: str) -> bool:
    """Whether the merge stage makes a `-merged` plain ViT of this method's variants: it adds
    modules, and they fold into the backbone's weights."""
    return has_adapters(method) and is_mergeable(method)


def merge(model: VisionTransformer) -> VisionTransformer:
    """A plain timm VisionTransformer with the adapters folded in (the input is left as it is)."""
    spec = adapter_spec(model)
    m = _method(spec["method"])
    if m.merge is None:
        raise PipelineError(f"adapter method '{m.name}' is not mergeable: export it unmerged")
    merged = copy.deepcopy(model)
    del merged.adapter_spec
    m.merge(merged)
    leftovers = {
        type(x).__name__ for x in merged.modules() if type(x).__module__.startswith("pipeline.")
    }
    if leftovers:
        raise PipelineError(f"merge of '{m.name}' left adapter modules behind: {leftovers}")
    bad = [k for k, v in merged.state_dict().items() if not torch.isfinite(v).all()]
    if bad:
        raise PipelineError(f"merge of '{m.name}' produced non-finite weights in {bad[:3]}")
    return merged.requires_grad_(True).eval()


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The compact form: only what the method trains (adapters and head)."""
    return {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = set(trainable_state(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise PipelineError(
            f"adapter file does not fit the model (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    model.load_state_dict(state, strict=False)


def param_counts(model: VisionTransformer) -> dict[str, int]:
    """Trainable parameters (adapter-only: without the head, as the papers count), and all."""
    head = {id(p) for p in model.get_classifier().parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {
        "params_trainable": sum(p.numel() for p in trainable),
        "params_adapter": sum(p.numel() for p in trainable if id(p) not in head),
        "params_total": sum(p.numel() for p in model.parameters()),
    }
