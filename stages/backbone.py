"""backbone <role>: the frozen backbone of a role, from the hub, a file, or pre-trained here."""

from __future__ import annotations

import dataclasses

from pipeline import models, paths
from pipeline.cli import run_stage
from pipeline.config import TrainConfig, load_params
from pipeline.data import load_split
from pipeline.io import write_json
from pipeline.train import evaluate, fit, is_main, seed_everything


def main(argv: list[str]) -> None:
    (role,) = argv
    params = load_params()
    cfg = params.backbone[role]
    kwargs = params.backbone_kwargs(role)
    report = {"arch": cfg.arch, "weights": cfg.weights}
    seed_everything(params.seed)
    if cfg.weights == "pretrain":
        train, val = load_split(paths.SOURCE / "train.npz"), load_split(paths.SOURCE / "val.npz")
        model = models.create(cfg.arch, kwargs, len(train.classes))
        p = params.pretrain
        recipe = TrainConfig(
            epochs=p.epochs,
            lr=p.lr,
            weight_decay=p.weight_decay,
            batch_size=p.batch_size,
            warmup_epochs=min(1.0, p.epochs / 4),
            min_lr_ratio=0.0,
            grad_clip=1.0,
        )
        fit(
            model,
            train,
            val,
            recipe,
            seed=params.seed,
            desc=f"pretrain {role}",
            checkpoint_dir=paths.CHECKPOINTS / "backbone" / role,
            live_dir=paths.LIVE / "backbone" / role,
            fingerprint={"arch": cfg.arch, "kwargs": kwargs, "pretrain": dataclasses.asdict(p)},
        )
        report["source_val_top1"] = evaluate(model, val)[1]
    else:
        model = models.create(cfg.arch, kwargs, 0)
        models.load_weights(model, cfg.weights, cfg.arch, kwargs, key=f"backbone.{role}.weights")
        # nothing trains here, yet dvc.yaml declares the curves: an empty folder of them
        (paths.LIVE / "backbone" / role / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
    if not is_main():
        return  # every process holds the same weights: rank 0 writes them
    model.reset_classifier(0)
    report["params"] = sum(p.numel() for p in model.parameters())
    models.save_model(paths.BACKBONES / role, model, cfg.arch, kwargs, num_classes=0)
    write_json(paths.METRICS / "backbone" / f"{role}.json", report)
    print(f"backbone {role}: {report}")


if __name__ == "__main__":
    run_stage(main)
