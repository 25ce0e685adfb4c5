"""Turn a configured data source into train / val / test splits of uint8 images."""

from __future__ import annotations

from pipeline import PipelineError
from pipeline.config import DataConfig, PretrainConfig
from pipeline.data import digits, folders, glyphs
from pipeline.data.arrays import ImageSet, random_split


def downstream(cfg: DataConfig) -> dict[str, ImageSet]:
    """The adaptation task as {"train", "val", "test"}, split VTAB-1K style where not given."""
    if cfg.source == "vtab":
        parts = folders.load_vtab(cfg.path, cfg.image_size)
        if "trainval" in parts:
            tv = parts.pop("trainval")
            train, val = random_split(len(tv), [min(cfg.train_size, len(tv))], cfg.split_seed)
            parts["train"], parts["val"] = tv.subset(train), tv.subset(val)
        return {k: parts[k] for k in ("train", "val", "test")}
    full = (
        digits.load(cfg.image_size)
        if cfg.source == "digits"
        else (folders.load_imagefolder(cfg.path, cfg.image_size))
    )
    train, val, test = random_split(len(full), [cfg.train_size, cfg.val_size], cfg.split_seed)
    if len(test) == 0:
        raise PipelineError(
            f"data: {len(full)} images leave no test split after "
            f"train_size={cfg.train_size} and val_size={cfg.val_size}"
        )
    return {"train": full.subset(train), "val": full.subset(val), "test": full.subset(test)}


def source(cfg: PretrainConfig, image_size: int, seed: int) -> dict[str, ImageSet]:
    """The glyphs source data for backbone pre-training as {"train", "val"}."""
    full = glyphs.generate(cfg.num_classes, cfg.samples_per_class, image_size, seed)
    n_val = max(1, int(len(full) * cfg.val_fraction))
    val, train = random_split(len(full), [n_val], seed)
    return {"train": full.subset(train), "val": full.subset(val)}
