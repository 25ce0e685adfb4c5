"""From params to a model ready to train, its recipe, and the one plain training driver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timm.models.vision_transformer import VisionTransformer

from pipeline import adapters, models, paths
from pipeline.artifacts import save_variant
from pipeline.config import Params, TrainConfig
from pipeline.data import ImageSet
from pipeline.io import digest
from pipeline.train import fit, is_main
from pipeline.train.probe import fit_probe
from pipeline.variants import Variant


def adapted(params: Params, backbone: Path, method: str, num_classes: int) -> VisionTransformer:
    """A saved frozen backbone with a new head and `method`'s adapters (options from params)."""
    model = models.load_model(backbone, num_classes=num_classes)
    return adapters.inject(model, method, **params.adapters.get(method, {}))


def recipe(params: Params, method: str, base: TrainConfig | None = None) -> TrainConfig:
    """The training recipe of `method`: train.* with its train.method_lr, if any."""
    base = base or params.train
    if method not in base.method_lr:
        return base
    return base.model_copy(update={"lr": base.method_lr[method]})


def run_dirs(stage: str, name: str) -> dict[str, Path]:
    """Checkpoint and dvclive folders of one training run."""
    return {
        "checkpoint_dir": paths.CHECKPOINTS / stage / name,
        "live_dir": paths.LIVE / stage / name,
    }


def fingerprint(name: str, model: VisionTransformer, *inputs: Path, **extra: Any) -> dict:
    """What makes a training run the same run: the variant, its adapters, its settings and the
    contents of its inputs (backbones, teacher files, the task data). A checkpoint is resumed
    only by a run with the same fingerprint."""
    return {
        "variant": name,
        **adapters.adapter_spec(model),
        **extra,
        "inputs": digest(*inputs, paths.DOWNSTREAM),
    }


def train_variant(
    params: Params, variant: Variant, train: ImageSet, val: ImageSet
) -> tuple[VisionTransformer, list[dict]]:
    """Train a variant alone (cross-entropy, its method's recipe; a method that adds nothing,
    the linear probe, has only its head to learn, which `fit_probe` fits) and save it (from
    rank 0 under torchrun) where the downstream stages look."""
    backbone = paths.BACKBONES / variant.role
    model = adapted(params, backbone, variant.method, len(train.classes))
    dirs = run_dirs("train", variant.name)
    if not adapters.has_adapters(variant.method):
        history = fit_probe(model, train, val, params.train.probe_c_grid, dirs["live_dir"])
    else:
        history = fit(
            model,
            train,
            val,
            recipe(params, variant.method),
            seed=params.seed,
            desc=variant.name,
            **dirs,
            fingerprint=fingerprint(variant.name, model, backbone),
        )
    if is_main():
        save_variant(
            variant.folder,
            model,
            name=variant.name,
            role=variant.role,
            backbone=backbone,
            classes=train.classes,
            history=history,
        )
    return model, history
