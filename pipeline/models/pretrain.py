"""The backbone stage's work: a role's frozen backbone, from the hub, a file, or pre-trained here
on the glyphs source data."""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer

from pipeline import models, paths
from pipeline.config import Params, TrainConfig
from pipeline.data import load_split
from pipeline.train import evaluate, fit, seed_everything


def make_backbone(params: Params, role: str) -> tuple[VisionTransformer, dict]:
    """The frozen backbone of `role` (pre-trained on the glyphs source data, or loaded from its
    `weights`) and its report; every process of a multi-process run ends with the same one."""
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
            fingerprint={"arch": cfg.arch, "kwargs": kwargs, "pretrain": p.model_dump()},
        )
        report["source_val_top1"] = evaluate(model, val)[1]
    else:
        model = models.create(cfg.arch, kwargs, 0)
        models.load_weights(model, cfg.weights, cfg.arch, kwargs, key=f"backbone.{role}.weights")
        # nothing trains here, yet dvc.yaml declares the curves: an empty folder of them
        (paths.LIVE / "backbone" / role / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
    return model, report
