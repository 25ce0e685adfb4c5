"""The linear probe: the head of a frozen ViT fitted as L2-regularised logistic regression on its
features, C chosen on val (scikit-learn's L-BFGS, as CLIP's linear probes are fitted).

Gradient steps from a zero head have no regulariser to choose and stop wherever the epochs end:
on the default backbones they left the probe 1-1.6 points below this fit. The features are
fitted as the head sees them (after the ViT's final norm), not standardised: the L2 penalty then
keeps the weights of near-constant features small, where standardising would scale them up and
with them every rounding error of the backbone (a merged adapter's, an fp16 or INT8 export's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from timm.models.vision_transformer import VisionTransformer

from pipeline import PipelineError
from pipeline.data import ImageSet
from pipeline.selection import fit_by_val
from pipeline.train.loop import features_of, live_logger, log_row, predict, scores


def features(model: VisionTransformer, data: ImageSet, desc: str | None = None) -> np.ndarray:
    """(N, D) float64: what the head of `model` sees for every image, in order."""
    return predict(model, data, forward=features_of, desc=desc).double().numpy()


def fit_probe(
    model: VisionTransformer,
    train: ImageSet,
    val: ImageSet,
    c_grid: list[float],
    live_dir: str | Path | None = None,
) -> list[dict]:
    """Set the head of `model` (backbone frozen) to the probe val chooses. Its history is one row:
    the chosen C, train and val loss and top-1, and val top-1 per C of the grid."""
    missing = sorted(set(range(len(train.classes))) - set(np.unique(train.labels).tolist()))
    if missing:
        named = ", ".join(repr(train.classes[i]) for i in missing[:3])
        raise PipelineError(
            f"the linear probe needs every class in the train split, which has no image of {named}"
        )
    x_train = features(model, train, "probe: train features")
    x_val = features(model, val, "probe: val features")
    clf, c, by_c = fit_by_val(
        lambda c: LogisticRegression(C=c, max_iter=5000),
        c_grid,
        (x_train, train.labels),
        (x_val, val.labels),
    )
    weight, bias = clf.coef_, clf.intercept_
    if len(train.classes) == 2:  # one logit, for the second class: softmax([0, s]) = sigmoid(s)
        weight, bias = np.vstack([np.zeros_like(weight), weight]), np.array([0.0, bias[0]])
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    logits = {
        split: torch.from_numpy(x @ weight.T + bias)
        for split, x in (("train", x_train), ("val", x_val))
    }
    train_loss, train_top1 = scores(logits["train"], train.labels)
    val_loss, val_top1 = scores(logits["val"], val.labels)
    row = {
        "C": c,
        "train_loss": train_loss,
        "train_top1": train_top1,
        "val_loss": val_loss,
        "val_top1": val_top1,
        "val_top1_by_C": {str(k): v for k, v in by_c.items()},
    }
    with live_logger(live_dir) as live:
        if live:
            live.log_param("C", c)
            log_row(live, {k: v for k, v in row.items() if k != "C"}, step=False)
    return [row]
