"""Merge a LoRA adapter saved by PEFT (adapter_config.json + adapter_model.safetensors).

PEFT's timm recipe targets qkv, proj, fc1, fc2 by name; "proj" also matches the patch
embedding's conv, which PEFT then adapts with a conv LoRA. Both kinds fold exactly:
linear ΔW = s·B A; conv ΔW[o, i] = s·Σ_r B[o, r] A[r, i] (B is 1x1), with s = alpha / r
(alpha / √r under rsLoRA). Modules PEFT saved whole (`modules_to_save`, e.g. the head) are loaded.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

from pipeline import PipelineError
from pipeline.io import read_tensors

PREFIX = "base_model.model."
UNSUPPORTED = {"use_dora": "DoRA", "fan_in_fan_out": "fan_in_fan_out", "lora_bias": "LoRA bias"}


def _alpha(config: dict, module: str) -> float:
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?{pattern}", module):
            return float(alpha)
    return float(config["lora_alpha"])


def merge_peft_lora(model: VisionTransformer, folder: str | Path) -> VisionTransformer:
    """A merged copy of `model` (the base the adapter was trained on); `model` is not changed."""
    folder = Path(folder)
    config_file, weights_file = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise PipelineError(
            f"{folder}: expected adapter_config.json and "
            "adapter_model.safetensors (PEFT's save_pretrained format)"
        )
    config = json.loads(config_file.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise PipelineError(f"{folder}: a {config['peft_type']} adapter, not LoRA")
    for key, what in UNSUPPORTED.items():
        if config.get(key):
            raise PipelineError(f"{folder}: {what} adapters cannot be merged here")
    tensors = {k.removeprefix(PREFIX): v for k, v in read_tensors(weights_file).items()}
    merged = copy.deepcopy(model).float()
    modules = dict(merged.named_modules())
    state = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        name = key.removesuffix(".lora_A.weight")
        b = tensors[f"{name}.lora_B.weight"]
        if name not in modules:
            raise PipelineError(f"{folder}: adapter targets '{name}', which the model lacks")
        rank = a.shape[0]
        alpha = _alpha(config, name)
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        a64, b64 = a.double(), b.double()
        # conv LoRA: A is a conv (r, in, kh, kw), B a 1x1 conv (out, r, 1, 1)
        conv = a.dim() == 4
        delta = torch.einsum("or,rikl->oikl", b64[:, :, 0, 0], a64) if conv else b64 @ a64
        weight = modules[name].weight
        if delta.shape != weight.shape:
            raise PipelineError(
                f"{folder}: '{name}' delta {tuple(delta.shape)} does not fit "
                f"weight {tuple(weight.shape)}"
            )
        state[f"{name}.weight"] = (weight.double() + scale * delta).float()
    for key, value in tensors.items():  # whole modules PEFT saved (modules_to_save)
        if ".lora_" not in key:
            state[re.sub(r"\.modules_to_save(\.default)?\.", ".", key)] = value
    unknown = sorted(set(state) - set(merged.state_dict()))
    if unknown:
        raise PipelineError(f"{folder}: adapter keys do not fit the model, e.g. {unknown[:3]}")
    bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if bad:
        raise PipelineError(f"{folder}: merging produced non-finite weights in {bad[:3]}")
    merged.load_state_dict(state, strict=False)
    return merged.eval()
