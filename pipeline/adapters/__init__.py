"""Adapters: one module per method behind one registry (inject, train, merge, store compactly)."""

from pipeline.adapters.peft_import import merge_peft_lora
from pipeline.adapters.registry import (
    METHODS,
    adapter_spec,
    check_options,
    has_adapters,
    has_merged_form,
    inject,
    is_mergeable,
    load_trainable,
    merge,
    param_counts,
    trainable_state,
)

__all__ = [
    "METHODS",
    "adapter_spec",
    "check_options",
    "has_adapters",
    "has_merged_form",
    "inject",
    "is_mergeable",
    "load_trainable",
    "merge",
    "merge_peft_lora",
    "param_counts",
    "trainable_state",
]
