"""Backbones: timm VisionTransformers, their weights, and the on-disk model format."""

from pipeline.models.backbone import (
    check_arch,
    create,
    load_model,
    load_weights,
    save_model,
)

__all__ = ["check_arch", "create", "load_model", "load_weights", "save_model"]
