"""Datasets: the embedded digits default, the glyphs source data, VTAB-1K and ImageFolder trees."""

from pipeline.data.arrays import ImageSet, load_split, save_split
from pipeline.data.transforms import MEAN, STD, loader, reseed, to_tensor

__all__ = ["MEAN", "STD", "ImageSet", "load_split", "loader", "reseed", "save_split", "to_tensor"]
