"""Checks across sections and against the registries (timm ViTs, adapter methods, variant
names), run on params the schema has validated section by section."""

from __future__ import annotations

from pathlib import Path

from pipeline import PipelineError
from pipeline.adapters import METHODS, check_options
from pipeline.config.loading import override
from pipeline.config.schema import ConfigError, Params, TrainConfig, TrainingBenchConfig
from pipeline.models import check_arch
from pipeline.variants import parse_variant


def check(params: Params) -> None:
    for role, cfg in params.backbone.items():
        check_arch(cfg.arch, f"backbone.{role}.arch")
        size = cfg.kwargs.get("img_size", params.data.image_size)
        if size != params.data.image_size:
            raise ConfigError(
                f"backbone.{role}.kwargs.img_size ({size}) must equal "
                f"data.image_size ({params.data.image_size}); leave it out"
            )
        if cfg.weights not in ("pretrain", "timm", "none") and not Path(cfg.weights).suffix:
            raise ConfigError(
                f"backbone.{role}.weights must be pretrain, timm, none or a "
                f"checkpoint path, got {cfg.weights!r}"
            )
    for method, options in params.adapters.items():
        check_options(method, options)
    for method, lr in params.train.method_lr.items():
        if method not in METHODS or not lr > 0:
            raise ConfigError(
                f"train.method_lr.{method}: needs a known method and a rate > 0, "
                f"got {lr!r} (methods: {', '.join(METHODS)})"
            )
    if len(params.train.betas) != 2 or not all(0 <= b < 1 for b in params.train.betas):
        raise ConfigError(f"train.betas must be two numbers in [0, 1), got {params.train.betas}")
    _check_training_bench(params.benchmark.training)
    if not params.benchmark.batch_sizes or min(params.benchmark.batch_sizes) < 1:
        raise ConfigError(f"benchmark.batch_sizes must be >= 1, got {params.benchmark.batch_sizes}")
    if not params.train.variants:
        raise ConfigError("train.variants: list at least one variant")
    for key, distilled in (("train.variants", False), ("distill.variants", True)):
        for name in getattr(params, key.split(".")[0]).variants:
            try:
                variant = parse_variant(name, params)
            except PipelineError as e:
                raise ConfigError(f"{key}: {e}") from None
            if bool(variant.distill) != distilled:
                where = "distill.variants" if variant.distill else "train.variants"
                raise ConfigError(f"{key}: '{name}' belongs in {where}")
    uses_kd = any(v.endswith("-kd") for v in params.distill.variants)
    if uses_kd and params.distill.kd.teacher not in params.train.variants:
        raise ConfigError(
            f"distill.kd.teacher '{params.distill.kd.teacher}' must be one of "
            "train.variants (it is trained first)"
        )
    wecolora = override(params.train, params.distill.wecolora.recipe, "distill.wecolora.recipe")
    override(params.train, params.continual.recipe, "continual.recipe")
    _check_shares(params, wecolora)


def _check_training_bench(cfg: TrainingBenchConfig) -> None:
    for key in ("model", "idat_teacher"):
        check_arch(getattr(cfg, key).arch, f"benchmark.training.{key}.arch")
    for name in cfg.methods:
        if name not in ("full", "idat", *METHODS):
            raise ConfigError(
                f"benchmark.training: unknown method {name!r} "
                f"(full, idat or one of {', '.join(METHODS)})"
            )
    if cfg.idat_method not in METHODS:
        raise ConfigError(
            f"benchmark.training.idat_method: {cfg.idat_method!r} is not an adapter method "
            f"(one of {', '.join(METHODS)})"
        )


def _check_shares(params: Params, wecolora: TrainConfig) -> None:
    """Every training batch splits evenly over the train.nproc processes."""
    sizes = {
        "train.batch_size": params.train.batch_size,
        "distill.wecolora.recipe.batch_size": wecolora.batch_size,
    }
    if any(b.weights == "pretrain" for b in params.backbone.values()):
        sizes["pretrain.batch_size"] = params.pretrain.batch_size
    nproc = params.train.nproc
    for key, size in sizes.items():
        if size % nproc:
            raise ConfigError(
                f"{key} ({size}) must be divisible by train.nproc ({nproc}): "
                "each process trains on an equal share of every batch"
            )
