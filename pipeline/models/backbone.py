"""Create timm ViTs from params, load their weights, and save / load them as safetensors + JSON.

The on-disk form is `model.safetensors` (a state dict with timm's own keys) beside `model.json`
({"arch", "kwargs", "num_classes"}), so anyone with timm alone can rebuild it:
    timm.create_model(arch, num_classes=num_classes, **kwargs).load_state_dict(..., strict=True)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from pipeline import PipelineError, paths
from pipeline.io import read_json, read_tensors, save_tensors, write_json


def check_arch(arch: str, key: str = "arch") -> None:
    if not timm.is_model(arch) or not arch.split(".")[0].startswith(("vit_", "deit_")):
        raise PipelineError(
            f"{key}: unknown timm ViT architecture '{arch}' "
            "(e.g. vit_tiny_patch16_224, vit_base_patch16_224.augreg_in21k)"
        )


def create(arch: str, kwargs: dict[str, Any], num_classes: int) -> VisionTransformer:
    check_arch(arch)
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise PipelineError(f"backbone kwargs {kwargs} do not fit {arch}: {e}") from e
    if not isinstance(model, VisionTransformer):
        raise PipelineError(f"{arch}: not a timm VisionTransformer")
    return model


def _hub_hint(arch: str) -> str:
    cfg = timm.models.get_pretrained_cfg(arch)
    hub = getattr(cfg, "hf_hub_id", None) if cfg else None
    source = f"'{hub}' on the Hugging Face hub" if hub else f"timm's pretrained tag '{arch}'"
    return f"download model.safetensors of {source} and set weights to that file's path"


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor] | None:
    """A state dict with timm's keys, or None for a big_vision .npz (timm reads those itself)."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if any("/" in k for k in z.files):
                return None
            return {k: torch.from_numpy(z[k]) for k in z.files}
    if path.suffix == ".safetensors":
        return read_tensors(path)
    if path.suffix in {".pth", ".pt", ".bin"}:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                return state[key]
        return state
    raise PipelineError(f"{path}: unsupported checkpoint type (use .safetensors, .npz, .pth)")


def load_weights(
    model: VisionTransformer, weights: str, arch: str, kwargs: dict[str, Any], key: str = "weights"
) -> None:
    """Fill the body of `model` from `weights`: "timm" (hub tag), "none" or a checkpoint path.

    The classifier head is never loaded: it belongs to the pre-training task, not ours.
    """
    if weights in ("none", "pretrain"):
        return
    if weights == "timm":
        hub_log = logging.getLogger("huggingface_hub")
        level = hub_log.level
        hub_log.setLevel(logging.CRITICAL)  # our one-line error says it all
        try:
            src = timm.create_model(arch, pretrained=True, num_classes=0, **kwargs)
        except Exception as e:  # the hub client raises many types offline; all mean "not here"
            raise PipelineError(
                f"{key}: cannot fetch pretrained weights for '{arch}' "
                f"({type(e).__name__}); {_hub_hint(arch)}"
            ) from None
        finally:
            hub_log.setLevel(level)
        state = src.state_dict()
    else:
        path = Path(weights)
        if not path.is_file():
            raise PipelineError(f"{key}: checkpoint file '{path}' not found")
        state = _read_checkpoint(path)
        if state is None:  # a big_vision / JAX .npz: timm has the reader for that layout
            model.load_pretrained(str(path))
            return
        state = checkpoint_filter_fn(state, model)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise PipelineError(
            f"{key}: checkpoint does not fit {arch} (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )


def save_model(
    folder: str | Path,
    model: torch.nn.Module,
    arch: str,
    kwargs: dict[str, Any],
    num_classes: int,
    extra: dict[str, Any] | None = None,
) -> None:
    folder = Path(folder)
    save_tensors(folder / paths.MODEL_FILE, model.state_dict())
    write_json(
        folder / paths.MODEL_META,
        {"arch": arch, "kwargs": kwargs, "num_classes": num_classes, **(extra or {})},
    )


def load_model(folder: str | Path, num_classes: int | None = None) -> VisionTransformer:
    """Rebuild a saved model; with another `num_classes`, the body loads and the head is new."""
    folder = Path(folder)
    if not (folder / paths.MODEL_META).is_file():
        raise PipelineError(f"{folder}: no saved model ({paths.MODEL_META}) there")
    spec = read_json(folder / paths.MODEL_META)
    keep_head = num_classes is None or num_classes == spec["num_classes"]
    model = create(spec["arch"], spec["kwargs"], spec["num_classes"] if keep_head else num_classes)
    state = read_tensors(folder / paths.MODEL_FILE)
    if not keep_head:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing) or (keep_head and missing):
        raise PipelineError(f"{folder}: saved weights do not fit {spec['arch']}")
    return model
