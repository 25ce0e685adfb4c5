"""train <variant>: adapters (and head) on the frozen backbone of the variant's role."""

from __future__ import annotations

from pipeline import adapters, build, paths
from pipeline.artifacts import load_task, save_variant
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.train import seed_everything
from pipeline.variants import parse_variant


def main(argv: list[str]) -> None:
    (name,) = argv
    params = load_params()
    variant = parse_variant(name, params)
    train, val = load_task("train", "val")
    backbone = paths.BACKBONES / variant.role
    seed_everything(params.seed)
    model = build.adapted(params, backbone, variant.method, len(train.classes))
    history = build.train_supervised(params, model, name, train, val, backbone)
    save_variant(
        variant.folder,
        model,
        name=name,
        role=variant.role,
        backbone=backbone,
        classes=train.classes,
        history=history,
    )
    print(
        f"{name}: val top-1 {history[-1]['val_top1']:.2f}% "
        f"({adapters.param_counts(model)['params_trainable']:,} trainable parameters)"
    )


if __name__ == "__main__":
    run_stage(main)
