"""train <variant>: adapters (and head) on the frozen backbone of the variant's role."""

from __future__ import annotations

import dataclasses

from pipeline import adapters, models, paths
from pipeline.artifacts import save_variant
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.data import load_split
from pipeline.train import fit, seed_everything
from pipeline.variants import parse_variant


def main(argv: list[str]) -> None:
    (name,) = argv
    params = load_params()
    variant = parse_variant(name, params)
    train, val = (
        load_split(paths.DOWNSTREAM / "train.npz"),
        load_split(paths.DOWNSTREAM / "val.npz"),
    )
    backbone = paths.BACKBONES / variant.role
    seed_everything(params.seed)
    model = models.load_model(backbone, num_classes=len(train.classes))
    adapters.inject(model, variant.method, **params.adapters.get(variant.method, {}))
    recipe = params.train
    if variant.method in recipe.method_lr:
        recipe = dataclasses.replace(recipe, lr=recipe.method_lr[variant.method])
    history = fit(
        model,
        train,
        val,
        recipe,
        seed=params.seed,
        desc=name,
        checkpoint_dir=paths.CHECKPOINTS / "train" / name,
        live_dir=paths.LIVE / "train" / name,
        fingerprint={"variant": name, **adapters.adapter_spec(model)},
    )
    save_variant(
        paths.ADAPTERS / name,
        model,
        {
            "variant": name,
            "role": variant.role,
            "backbone": str(backbone),
            "num_classes": len(train.classes),
            "classes": train.classes,
            **adapters.param_counts(model),
            "history": history,
        },
    )
    print(
        f"{name}: val top-1 {history[-1]['val_top1']:.2f}% "
        f"({adapters.param_counts(model)['params_trainable']:,} trainable parameters)"
    )


if __name__ == "__main__":
    run_stage(main)
