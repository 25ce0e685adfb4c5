"""Create timm ViTs from params, load their weights, and save / load them as safetensors + JSON.

The on-disk form is `model.safetensors` (a state dict with timm's own keys) beside `model.json`
({"arch", "kwargs", "num_classes"}), so anyone with timm alone can rebuild it:
    timm.create_model(arch, num_classes=num_classes, **kwargs).load_state_dict(..., strict=True)
"""

from __future__ import annotations

import functools
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from safetensors.torch import load_file
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


def _widths(model: VisionTransformer) -> dict[str, Any]:
    """The kwargs that fix a ViT's tensor widths and attention layout."""
    block = model.blocks[0]
    return {
        "embed_dim": model.embed_dim,
        "depth": len(model.blocks),
        "num_heads": block.attn.num_heads,
        "patch_size": _side(tuple(model.patch_embed.patch_size)),
        "mlp_ratio": _ratio(block.mlp.fc1.out_features, model.embed_dim),
    }


@functools.cache
def _arch_widths(arch: str) -> dict[str, Any]:
    # on the meta device even vit_huge builds in a blink, with no memory for its weights
    with torch.device("meta"):
        return _widths(timm.create_model(arch, pretrained=False, num_classes=0))


def _side(size: tuple[int, ...]) -> int | tuple[int, ...]:
    return size[0] if len(set(size)) == 1 else size


def _ratio(hidden: int, dim: int) -> float:
    return round(hidden / dim, 4)


def _flow(d: dict[str, Any]) -> str:
    """A YAML flow mapping, as one pastes it into params.yaml."""
    return (
        "{"
        + ", ".join(f"{k}: {list(v) if isinstance(v, tuple) else v}" for k, v in d.items())
        + "}"
    )


def _kwargs_key(key: str) -> str:
    """backbone.<role>.weights -> backbone.<role>.kwargs (the params key beside it)."""
    parent = key.rpartition(".")[0]
    return f"{parent}.kwargs" if parent else "kwargs"


def _hub_hint(arch: str) -> str:
    cfg = timm.models.get_pretrained_cfg(arch)
    hub = getattr(cfg, "hf_hub_id", None) if cfg else None
    source = f"'{hub}' on the Hugging Face hub" if hub else f"timm's pretrained tag '{arch}'"
    return f"download model.safetensors of {source} and set weights to that file's path"


def _check_hub_fit(model: VisionTransformer, arch: str, key: str) -> None:
    """The arch's pretrained weights come at its own widths: refuse kwargs that change them
    before any download, rather than fail after one (or load a num_heads they were not
    trained with, which no tensor shape reveals). img_size is not a width: timm resamples
    pos_embed."""
    ours, theirs = _widths(model), _arch_widths(arch)
    changed = [k for k in ours if ours[k] != theirs[k]]
    if changed:
        kwargs_key = _kwargs_key(key)
        given = ", ".join(f"{k} {ours[k]}" for k in changed)
        pretrained = ", ".join(str(theirs[k]) for k in changed)
        raise PipelineError(
            f"{key}: no pretrained weights of '{arch}' fit {kwargs_key} (they give {given}; "
            f"the pretrained model has {pretrained}); drop those from {kwargs_key} to use "
            f"them, or set {key} to pretrain or to a checkpoint of those widths"
        )


def _read_checkpoint(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    """A state dict with timm's keys, or None for a big_vision .npz (timm reads those itself)."""
    if path.suffix not in {".npz", ".safetensors", ".pth", ".pt", ".bin"}:
        raise PipelineError(f"{path}: unsupported checkpoint type (use .safetensors, .npz, .pth)")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if any("/" in k for k in z.files):
                    return None
                state = {k: torch.from_numpy(z[k]) for k in z.files}
        elif path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any class outside plain containers and tensors: a pickled
        # nn.Module (torch.save(model)). torch's advice, weights_only=False, runs the file's code.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise PipelineError(
                f"{key}: '{path}' holds a pickled object ({found[1]}), not a state dict, and "
                "this project never unpickles code; save the weights with "
                "torch.save(model.state_dict(), path) or as .safetensors"
            ) from None
        raise _unreadable(path, key, e) from None
    except Exception as e:  # each reader raises its own types, some with many-line messages
        raise _unreadable(path, key, e) from None
    for wrapper in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict):
        raise PipelineError(
            f"{key}: '{path}' holds a Python {type(state).__name__}, not a state dict "
            "(a mapping of parameter names to tensors)"
        )
    odd = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise PipelineError(
            f"{key}: '{path}' is not a state dict: its '{odd}' is a Python "
            f"{type(state[odd]).__name__}, not a tensor"
        )
    return state


def _unreadable(path: Path, key: str, e: Exception) -> PipelineError:
    return PipelineError(
        f"{key}: '{path}' is not a readable {path.suffix} checkpoint ({type(e).__name__}); "
        "it is damaged, cut short or of another format"
    )


def _fitting_kwargs(shapes: dict[str, tuple[int, ...]], arch: str) -> dict[str, Any] | None:
    """The width kwargs a checkpoint was saved with, read from its tensors' shapes."""
    patch = shapes.get("patch_embed.proj.weight")
    fc1 = shapes.get("blocks.0.mlp.fc1.weight")
    if patch is None or len(patch) != 4 or fc1 is None:
        return None
    embed_dim = patch[0]
    # no tensor records num_heads (qkv is 3*dim x dim for any split): the arch's own at its
    # width, else timm's 64-wide heads
    default = _arch_widths(arch)
    heads = default["num_heads"] if embed_dim == default["embed_dim"] else max(1, embed_dim // 64)
    blocks = {int(k.split(".")[1]) for k in shapes if re.match(r"blocks\.\d+\.", k)}
    return {
        "embed_dim": embed_dim,
        "depth": max(blocks) + 1,
        "num_heads": heads,
        "patch_size": _side(patch[2:]),
        "mlp_ratio": _ratio(fc1[0], embed_dim),
    }


def _natural(key: str) -> list[str | int]:
    """blocks.2 before blocks.10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _listed(keys: list[str], n: int = 3) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _check_fit(
    model: VisionTransformer,
    raw: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    source: str,
    arch: str,
    key: str,
) -> None:
    """One line for a checkpoint that load_state_dict would refuse (it would print one line per
    tensor). `state` is `raw` after timm's checkpoint_filter_fn: what that resamples (pos_embed
    for another grid, the patch kernel) fits and is not flagged; shapes are quoted from `raw`,
    as the file holds them."""
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("head.")}
    shown = {k: tuple(v.shape) for k, v in state.items()} | {
        k: tuple(v.shape) for k, v in raw.items()
    }
    wrong = [  # in the model's order (cls_token, pos_embed, ...); safetensors sorts its keys
        f"{k}: checkpoint {shown[k]} vs model {shape}"
        for k, shape in ours.items()
        if k in state and tuple(state[k].shape) != shape
    ]
    missing = [k for k in ours if k not in state]
    unexpected = sorted((k for k in state if k not in ours), key=_natural)
    if not (wrong or missing or unexpected):
        return
    kwargs_key = _kwargs_key(key)
    parts = [_listed(wrong)] if wrong else []
    if missing:
        parts.append(f"missing {_listed(missing)}")
    if unexpected:
        parts.append(f"unexpected {_listed(unexpected)}")
    msg = f"{key}: {source} does not fit {arch} with {kwargs_key}: {'; '.join(parts)}"
    fits = _fitting_kwargs(shown, arch)
    if fits is not None:
        msg += f"; it fits {kwargs_key} {_flow(fits)} (num_heads is a guess: no tensor records it)"
    raise PipelineError(msg)


def load_weights(
    model: VisionTransformer, weights: str, arch: str, kwargs: dict[str, Any], key: str = "weights"
) -> None:
    """Fill the body of `model` from `weights`: "timm" (hub tag), "none" or a checkpoint path.

    `key` is the params key of `weights` (backbone.<role>.weights): errors name it and the
    kwargs beside it. The classifier head is never loaded: it belongs to the pre-training task.
    """
    if weights in ("none", "pretrain"):
        return
    if weights == "timm":
        _check_hub_fit(model, arch, key)
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
        raw = state = src.state_dict()
        source = f"the pretrained weights of '{arch}'"
    else:
        path = Path(weights)
        if not path.is_file():
            raise PipelineError(f"{key}: checkpoint file '{path}' not found")
        raw = _read_checkpoint(path, key)
        if raw is None:  # a big_vision / JAX .npz: timm has the reader for that layout
            model.load_pretrained(str(path))
            return
        state = checkpoint_filter_fn(raw, model)
        source = f"checkpoint '{path}'"
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    _check_fit(model, raw, state, source, arch, key)
    model.load_state_dict(state, strict=False)


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
