"""From params to a model ready to train, its recipe, and the one plain training driver."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from timm.models.vision_transformer import VisionTransformer

from pipeline import adapters, models, paths
from pipeline.config import Params, TrainConfig
from pipeline.data import ImageSet
from pipeline.train import fit


def adapted(params: Params, backbone: Path, method: str, num_classes: int) -> VisionTransformer:
    """A saved frozen backbone with a new head and `method`'s adapters (options from params)."""
    model = models.load_model(backbone, num_classes=num_classes)
    return adapters.inject(model, method, **params.adapters.get(method, {}))


def recipe(params: Params, method: str, base: TrainConfig | None = None) -> TrainConfig:
    """The training recipe of `method`: train.* with its train.method_lr, if any."""
    base = base or params.train
    lr = base.method_lr.get(method)
    return dataclasses.replace(base, lr=lr) if lr else base


def run_dirs(stage: str, name: str) -> dict[str, Path]:
    """Checkpoint and dvclive folders of one training run."""
    return {
        "checkpoint_dir": paths.CHECKPOINTS / stage / name,
        "live_dir": paths.LIVE / stage / name,
    }


def train_supervised(
    params: Params,
    model: VisionTransformer,
    name: str,
    train: ImageSet,
    val: ImageSet,
    stage: str = "train",
    **fit_options,
) -> list[dict]:
    """Cross-entropy training of `model`'s trainable parameters with the method's recipe."""
    return fit(
        model,
        train,
        val,
        recipe(params, adapters.adapter_spec(model)["method"]),
        seed=params.seed,
        desc=name,
        **run_dirs(stage, name),
        fingerprint={"variant": name, **adapters.adapter_spec(model)},
        **fit_options,
    )
