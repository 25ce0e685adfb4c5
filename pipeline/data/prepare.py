"""Turn a configured data source into train / val / test splits of uint8 images, and check the
settings that depend on the data (its classes, its split sizes) before anything trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import ConfigError, DataConfig, Params, PretrainConfig
from pipeline.data import digits, folders, glyphs
from pipeline.data.arrays import ImageSet, random_split, stratified_split


def describe(cfg: DataConfig) -> str:
    """The data as messages name it: its folder, or the embedded digits."""
    return cfg.path if cfg.source != "digits" and cfg.path else "the digits set"


def _split(labels: np.ndarray, sizes: list[int], cfg: DataConfig) -> list[np.ndarray]:
    if cfg.stratify:
        return stratified_split(labels, sizes, cfg.split_seed)
    return random_split(len(labels), sizes, cfg.split_seed)


def downstream(cfg: DataConfig) -> dict[str, ImageSet]:
    """The adaptation task as {"train", "val", "test"}, split VTAB-1K style where not given."""
    if cfg.source == "vtab":
        parts = folders.load_vtab(cfg.path, cfg.image_size)
        if "trainval" in parts:
            tv = parts.pop("trainval")
            if cfg.train_size + cfg.val_size > len(tv):
                train, listing = len(tv) * 4 // 5, Path(cfg.path or "") / "train800val200.txt"
                raise ConfigError(
                    f"{listing} lists {len(tv)} images, fewer than "
                    f"data.train_size ({cfg.train_size}) + data.val_size ({cfg.val_size}): "
                    f"set them to fit, e.g. data.train_size={train} "
                    f"data.val_size={len(tv) - train}"
                )
            # val takes the rest of the list (at least val_size): test.txt is the test split
            train, val = _split(tv.labels, [cfg.train_size], cfg)
            parts["train"], parts["val"] = tv.subset(train), tv.subset(val)
        return {k: parts[k] for k in ("train", "val", "test")}
    full = (
        digits.load(cfg.image_size)
        if cfg.source == "digits"
        else (folders.load_imagefolder(cfg.path, cfg.image_size))
    )
    if cfg.train_size + cfg.val_size >= len(full):
        train, val = max(1, len(full) * 3 // 5), max(1, len(full) // 5)
        raise ConfigError(
            f"{describe(cfg)} holds {len(full)} images: data.train_size ({cfg.train_size}) + "
            f"data.val_size ({cfg.val_size}) leave none for the test split: set them to fit, "
            f"e.g. data.train_size={train} data.val_size={val}"
        )
    train, val, test = _split(full.labels, [cfg.train_size, cfg.val_size], cfg)
    return {"train": full.subset(train), "val": full.subset(val), "test": full.subset(test)}


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def check_task(params: Params, task: dict[str, ImageSet]) -> None:
    """The settings that depend on the classes and split sizes, checked where prepare knows
    them, rather than in the stage that uses each (continual is the last of the pipeline)."""
    train, where = task["train"], describe(params.data)
    k = len(train.classes)
    if absent := np.flatnonzero(np.bincount(train.labels, minlength=k) == 0).tolist():
        fix = (
            f"raise data.train_size ({params.data.train_size})"
            if params.data.stratify
            else "set data.stratify to true"
        )
        raise ConfigError(
            f"{where}: class '{train.classes[absent[0]]}' has no image in the train split: {fix}"
        )
    tasks, order = params.continual.tasks, params.continual.class_order
    if k % tasks:
        raise ConfigError(
            f"continual.tasks ({tasks}) must divide the {k} classes of {where}: "
            f"set it to one of {_divisors(k)}"
        )
    if isinstance(order, list) and sorted(order) != list(range(k)):
        raise ConfigError(
            f"continual.class_order must list each of the {k} classes of {where} once "
            f"(a permutation of 0..{k - 1}), got {order}: or set it to null or a seed"
        )
    if params.export.calibration_images > len(train):
        raise ConfigError(
            f"export.calibration_images ({params.export.calibration_images}) is more than the "
            f"{len(train)} images of the train split of {where}: set it to at most {len(train)}"
        )


def source(cfg: PretrainConfig, image_size: int, seed: int) -> dict[str, ImageSet]:
    """The glyphs source data for backbone pre-training as {"train", "val"}."""
    full = glyphs.generate(cfg.num_classes, cfg.samples_per_class, image_size, seed, cfg.grid)
    n_val = max(1, int(len(full) * cfg.val_fraction))
    val, train = random_split(len(full), [n_val], seed)
    return {"train": full.subset(train), "val": full.subset(val)}
