"""Variant names: `<role>-<method>[-<distillation>]`; the merged form adds `-merged`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline import PipelineError

if TYPE_CHECKING:
    from pipeline.config import Params


@dataclass(frozen=True)
class Variant:
    name: str
    role: str  # a key of params.backbone
    method: str  # a registered adapter method
    distill: str | None = None

    @property
    def merged_name(self) -> str:
        return f"{self.name}-merged"


def parse_variant(name: str, params: Params) -> Variant:
    from pipeline.adapters import METHODS

    parts = name.split("-")
    if len(parts) not in (2, 3):
        raise PipelineError(f"train.variants: '{name}' is not <role>-<method>[-<distillation>]")
    role, method = parts[0], parts[1]
    if role not in params.backbone:
        raise PipelineError(
            f"train.variants: '{name}': role '{role}' has no backbone "
            f"(backbone defines {', '.join(params.backbone) or 'none'})"
        )
    if method not in METHODS:
        raise PipelineError(
            f"train.variants: '{name}': unknown method '{method}' (known: {', '.join(METHODS)})"
        )
    if len(parts) == 3:
        raise PipelineError(f"train.variants: '{name}': unknown distillation '{parts[2]}'")
    return Variant(name, role, method)
