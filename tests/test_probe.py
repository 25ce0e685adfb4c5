"""The linear probe: logistic regression on a frozen ViT's features, C chosen on val, copied into
the ViT's own head."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from pipeline import PipelineError, adapters
from pipeline.data import ImageSet, to_tensor
from pipeline.train import evaluate
from pipeline.train.probe import features, fit_probe


def _halves(data: ImageSet) -> tuple[ImageSet, ImageSet]:
    idx = np.arange(len(data))
    return data.subset(idx[idx % 2 == 0]), data.subset(idx[idx % 2 == 1])


def _reference(model, train: ImageSet, val: ImageSet) -> tuple[LogisticRegression, np.ndarray]:
    """scikit-learn's fit (C = 1) on the head's features of `train`, by hand; val's features."""
    x_train, x_val = features(model, train), features(model, val)
    return LogisticRegression(C=1.0, max_iter=5000).fit(x_train, train.labels), x_val


def test_probe_is_scikit_learns_fit_in_the_head(tiny_vit, glyph_data, tmp_path):
    train, val = _halves(glyph_data)
    model = adapters.inject(tiny_vit(), "linear")
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    grid = [1e-4, 1.0]  # C = 1e-4 shrinks every weight to nothing: val must reject it
    (row,) = fit_probe(model, train, val, grid, tmp_path / "live")

    ref, x_val = _reference(model, train, val)
    assert row["C"] == 1.0 and row["val_top1_by_C"]["0.0001"] < row["val_top1_by_C"]["1.0"]
    model.eval()
    with torch.no_grad():
        logits = model(to_tensor(val.images)).double().numpy()
    np.testing.assert_allclose(logits, ref.decision_function(x_val), rtol=0, atol=1e-4)
    # the row's figures are the model's own, and only the head moved
    loss, top1 = evaluate(model, val)
    assert row["val_top1"] == pytest.approx(top1, abs=1e-5)
    assert row["val_loss"] == pytest.approx(loss, rel=1e-4)
    assert row["val_top1"] == row["val_top1_by_C"]["1.0"]
    for k, v in model.state_dict().items():
        if not k.startswith("head."):
            torch.testing.assert_close(v, frozen[k], rtol=0, atol=0)
    logged = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert logged["val"]["top1"] == pytest.approx(row["val_top1"])


def test_two_classes_get_a_logit_each(tiny_vit, glyph_data):
    two = glyph_data.subset(np.flatnonzero(glyph_data.labels < 2))
    two = ImageSet(two.images, two.labels, glyph_data.classes[:2])
    train, val = _halves(two)
    model = adapters.inject(tiny_vit(num_classes=2), "linear")
    fit_probe(model, train, val, [1.0])
    ref, x_val = _reference(model, train, val)
    with torch.no_grad():
        probs = model.eval()(to_tensor(val.images)).softmax(1).double().numpy()
    np.testing.assert_allclose(probs, ref.predict_proba(x_val), rtol=0, atol=1e-5)


def test_a_class_missing_from_train_is_named(tiny_vit, glyph_data):
    train = glyph_data.subset(np.flatnonzero(glyph_data.labels != 3))
    model = adapters.inject(tiny_vit(), "linear")
    with pytest.raises(
        PipelineError,
        match=rf"every class in the train split, which has no image of '{train.classes[3]}'",
    ):
        fit_probe(model, train, glyph_data, [1.0])
