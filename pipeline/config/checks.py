"""Checks across sections and against the registries (timm ViTs, adapter methods, variant
names), run on params the schema has validated section by section."""

from __future__ import annotations

from pathlib import Path

from pipeline import PipelineError
from pipeline.adapters import METHODS, check_options, has_merged_form
from pipeline.config.loading import override
from pipeline.config.schema import ConfigError, Params, TrainConfig, TrainingBenchConfig
from pipeline.models import check_arch
from pipeline.variants import all_variants, parse_variant


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
    if params.seeds.idat_method not in METHODS:
        raise ConfigError(
            f"seeds.idat_method: unknown method {params.seeds.idat_method!r} "
            f"(methods: {', '.join(METHODS)})"
        )
    if len(params.train.betas) != 2 or not all(0 <= b < 1 for b in params.train.betas):
        raise ConfigError(f"train.betas must be two numbers in [0, 1), got {params.train.betas}")
    check_shift(params.train, params.data.image_size, "train")
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
    check_shift(wecolora, params.data.image_size, "distill.wecolora.recipe")
    continual = override(params.train, params.continual.recipe, "continual.recipe")
    check_shift(continual, params.data.image_size, "continual.recipe")
    _check_shares(params, wecolora)
    _check_serving(params)
    _check_class_order(params.continual.class_order)


def check_shift(cfg: TrainConfig, image_size: int, key: str) -> None:
    """A training recipe's shift (`key`: where it was set) against data.image_size."""
    if 2 * cfg.shift >= image_size:
        raise ConfigError(
            f"{key}.shift ({cfg.shift}) must be under half of data.image_size "
            f"({image_size}), or an image could move out of sight"
        )


def _check_serving(params: Params) -> None:
    """benchmark.serve.variants serves each merged form beside its unmerged one: each must be a
    variant of this run that merges (the benchmark stage, at the end of a run, needs both)."""
    merged = [v.name for v in all_variants(params) if has_merged_form(v.method)]
    for name in params.benchmark.serve.variants or []:
        if name not in merged:
            raise ConfigError(
                f"benchmark.serve.variants: {name!r} is not a variant with a merged form in "
                "this run: set benchmark.serve.variants to a subset of train.variants / "
                f"distill.variants that merge ({', '.join(merged) or 'none'})"
            )


def _check_class_order(order: object) -> None:
    """continual.class_order's form; prepare checks a list against the classes it finds."""
    if order is None or (isinstance(order, int) and not isinstance(order, bool)):
        return
    if not isinstance(order, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in order
    ):
        raise ConfigError(
            "continual.class_order must be null (natural order), a seed (an integer) or a list "
            f"of class indices >= 0, got {order!r}"
        )
    if len(set(order)) != len(order):
        twice = next(c for c in order if order.count(c) > 1)
        raise ConfigError(
            f"continual.class_order lists class {twice} twice: a list is a permutation of the "
            "classes 0..K-1"
        )


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
