"""Per-epoch training checkpoints (safetensors + JSON), written whole or not at all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipeline.io import atomic_dir


def save(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any]
) -> None:
    """Trainable weights, AdamW moments and RNG state as tensors; everything else as JSON."""
    tensors = {f"model.{k}": p.detach() for k, p in model.named_parameters() if p.requires_grad}
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for k, v in state.items():
            tensors[f"optim.{pid}.{k}"] = torch.as_tensor(v)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    with atomic_dir(folder) as tmp:
        save_file(
            {k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp / "last.safetensors")
        )
        (tmp / "last.json").write_text(json.dumps({**meta, "param_groups": opt["param_groups"]}))


def load(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, fingerprint: str
) -> dict[str, Any] | None:
    """Restore a checkpoint made for the same run (same fingerprint); None if there is none."""
    meta_file = folder / "last.json"
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text())
    if meta.get("fingerprint") != fingerprint:
        return None  # a different run's state: never resume from it
    tensors = load_file(str(folder / "last.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in tensors.items():
            if k.startswith("model."):
                params[k[len("model.") :]].copy_(v)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta


def clear(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
