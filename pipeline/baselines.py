"""Baselines nobody here wrote: scikit-learn's classifiers on the images' pixels.

Every run records them beside the adapted ViTs, so a reader sees at once whether adaptation
beats a linear model on pixels. Each image is averaged down to `size` x `size` pixels per
channel (the embedded digits' own 8 x 8) and scaled to [0, 1]. Each model is fitted on the train
split for every C of the grid; the C with the best val top-1 is the one whose test top-1 counts
(`pipeline.selection`).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

from pipeline.data import ImageSet
from pipeline.selection import fit_by_val


def pixels(data: ImageSet, size: int) -> np.ndarray:
    """(N, size * size * 3) float features: the images area-averaged to size x size, in [0, 1]."""
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255.0
    return F.adaptive_avg_pool2d(x, size).flatten(1).numpy()


def _model(kind: str, c: float):
    if kind == "logreg":
        return LogisticRegression(C=c, max_iter=5000)
    return SVC(C=c)  # RBF, gamma "scale": scikit-learn's defaults


def pixel_baselines(
    train: ImageSet, val: ImageSet, test: ImageSet, size: int, c_grid: list[float]
) -> dict[str, dict]:
    """{"pixels-logreg": ..., "pixels-svc": ...}: test and val top-1 (%) and the C chosen."""
    x_train, x_val, x_test = (pixels(d, size) for d in (train, val, test))
    out = {}
    for kind in ("logreg", "svc"):
        model, c, scores = fit_by_val(
            partial(_model, kind),
            c_grid,
            (x_train, train.labels),
            (x_val, val.labels),
        )
        out[f"pixels-{kind}"] = {
            "top1": 100.0 * float(np.mean(model.predict(x_test) == test.labels)),
            "val_top1": scores[c],
            "C": c,
            "features": f"{size}x{size}x3 pixels",
        }
    return out
