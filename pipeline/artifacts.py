"""Trained variants on disk: a compact adapter file beside a JSON that says how to rebuild it.

`<variant folder>/adapter.safetensors` holds only what the method trained (adapters and head);
`adapter.json` names the frozen backbone folder (relative to the variant folder, so the variant
loads its own backbone from whatever folder it is used), the sha256 of that backbone's files (the
adapters fit those weights alone), the method and its options. Variants trained alone live in
models/adapters, distilled ones in models/distilled (see Variant.folder).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from pipeline import PipelineError, adapters, models, paths
from pipeline.data import ImageSet, load_split
from pipeline.io import digest, read_json, read_tensors, save_tensors, write_json
from pipeline.variants import Variant


def save_variant(
    folder: str | Path,
    model: torch.nn.Module,
    *,
    name: str,
    backbone: Path,
    classes: list[str],
    history: list[dict],
    **extra: Any,
) -> None:
    """Save a trained variant: its compact state and how to rebuild it."""
    folder = Path(folder)
    save_tensors(folder / paths.ADAPTER_FILE, adapters.trainable_state(model))
    meta = {
        "variant": name,
        "backbone": os.path.relpath(backbone, folder),
        "backbone_sha256": digest(*_backbone_files(backbone)),
        "num_classes": len(classes),
        "classes": classes,
        **adapters.param_counts(model),
        "history": history,
        **extra,
    }
    write_json(folder / paths.ADAPTER_META, {**meta, **adapters.adapter_spec(model)})


def load_variant(folder: str | Path) -> tuple[VisionTransformer, dict[str, Any]]:
    """Rebuild a trained variant: frozen backbone + injected adapters + trained weights."""
    folder = Path(folder)
    if not (folder / paths.ADAPTER_META).is_file():
        raise PipelineError(f"{folder}: no trained variant there (run the train stage first)")
    meta = read_json(folder / paths.ADAPTER_META)
    backbone = backbone_folder(folder, meta)
    model = models.load_model(backbone, num_classes=meta["num_classes"])
    files = _backbone_files(backbone)
    if digest(*files) != meta.get("backbone_sha256"):
        raise PipelineError(
            f"{folder / paths.ADAPTER_META} and {files[0]} do not match: the adapters were "
            "trained on another backbone (retrain the variant, or restore that backbone)"
        )
    adapters.inject(model, meta["method"], **meta["options"])
    adapters.load_trainable(model, read_tensors(folder / paths.ADAPTER_FILE))
    return model.eval(), meta


def backbone_folder(folder: str | Path, meta: dict[str, Any]) -> Path:
    """The backbone folder a variant's `adapter.json` (`meta`) names."""
    return Path(os.path.normpath(Path(folder) / meta["backbone"]))


def _backbone_files(backbone: Path) -> list[Path]:
    """What a variant is bound to: the backbone's weights and how to rebuild it."""
    return [backbone / paths.MODEL_FILE, backbone / paths.MODEL_META]


def load_torch_folder(folder: str | Path) -> tuple[torch.nn.Module, list[str]]:
    """A PyTorch model and its classes from a model folder (a plain or merged ViT:
    `model.json`) or a trained variant's folder (`adapter.json`)."""
    folder = Path(folder)
    if (folder / paths.MODEL_META).is_file():
        return models.load_model(folder).eval(), read_json(folder / paths.MODEL_META).get(
            "classes", []
        )
    if (folder / paths.ADAPTER_META).is_file():
        model, meta = load_variant(folder)
        return model, meta.get("classes", [])
    raise PipelineError(
        f"{folder}: not a model folder ({paths.MODEL_META} + {paths.MODEL_FILE}) "
        f"nor a trained variant's folder ({paths.ADAPTER_META})"
    )


def merges(variant: Variant) -> bool:
    """Whether the merge stage makes a `-merged` form of this variant."""
    return adapters.has_merged_form(variant.method)


def deployables(variants: list[Variant]) -> dict[str, Variant]:
    """Every model the downstream stages handle (each variant, then each merged form), mapped
    to the variant it comes from."""
    out = {v.name: v for v in variants}
    out.update({v.merged_name: v for v in variants if merges(v)})
    return out


def shipped(name: str, variant: Variant) -> bool:
    """Whether `name` is what one deploys of its variant: the merged form where there is one
    (the unmerged form stays only to be compared), else the model itself."""
    return name == variant.merged_name or not merges(variant)


def load_deployable(name: str, variant: Variant) -> torch.nn.Module:
    """A model by its deployable name: `<variant>` (with adapters) or `<variant>-merged`."""
    if name == variant.merged_name:
        return models.load_model(paths.MERGED / name).eval()
    return load_variant(variant.folder)[0]


def load_task(*splits: str) -> list[ImageSet]:
    """The prepared downstream splits by name ("train", "val", "test")."""
    return [load_split(paths.DOWNSTREAM / f"{name}.npz") for name in splits]
