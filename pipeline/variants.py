"""Variant names: `<role>-<method>[-<distillation>]`; the merged form adds `-merged`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import PipelineError

if TYPE_CHECKING:
    from pipeline.config import Params


DISTILLATIONS = ("idat", "wecolora", "kd")


@dataclass(frozen=True)
class Variant:
    name: str
    role: str  # a key of params.backbone; for iDAT the student is the larger backbone
    method: str  # a registered adapter method
    distill: str | None = None

    @property
    def merged_name(self) -> str:
        return f"{self.name}-merged"

    @property
    def folder(self) -> Path:
        """Where the train or distill stage writes this variant."""
        from pipeline import paths

        if self.distill == "idat" and self.role == "teacher":  # saved beside its student
            return paths.DISTILLED / f"student-{self.method}-idat" / "teacher"
        return (paths.DISTILLED if self.distill else paths.ADAPTERS) / self.name

    @property
    def idat_teacher(self) -> Variant:
        """The smaller model an iDAT run trains beside this student."""
        return Variant(f"teacher-{self.method}-idat", "teacher", self.method, "idat")


def parse_variant(name: str, params: Params) -> Variant:
    from pipeline.adapters import METHODS

    parts = name.split("-")
    if len(parts) not in (2, 3):
        raise PipelineError(f"'{name}' is not <role>-<method>[-<distillation>]")
    role, method = parts[0], parts[1]
    if role not in params.backbone:
        raise PipelineError(
            f"'{name}': role '{role}' has no backbone "
            f"(backbone defines {', '.join(params.backbone) or 'none'})"
        )
    if method not in METHODS:
        raise PipelineError(f"'{name}': unknown method '{method}' (known: {', '.join(METHODS)})")
    distill = parts[2] if len(parts) == 3 else None
    if distill is not None and distill not in DISTILLATIONS:
        raise PipelineError(
            f"'{name}': unknown distillation '{distill}' (known: {', '.join(DISTILLATIONS)})"
        )
    if distill and role != "student":
        raise PipelineError(
            f"'{name}': a distilled variant is the student (its teacher comes "
            f"with it): list student-{method}-{distill}"
        )
    return Variant(name, role, method, distill)


def all_variants(params: Params) -> list[Variant]:
    """Every variant a run makes: trained alone, then distilled, then iDAT's teachers."""
    out = [parse_variant(n, params) for n in [*params.train.variants, *params.distill.variants]]
    return out + [v.idat_teacher for v in out if v.distill == "idat"]
