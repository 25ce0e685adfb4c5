"""The pixel baselines: scikit-learn on the digits' pixels, C chosen on val, never on test."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from pipeline.baselines import pixel_baselines, pixels
from pipeline.config import DataConfig, parse_params
from pipeline.data import ImageSet, prepare


@pytest.fixture(scope="module")
def digits():
    parts = prepare.downstream(DataConfig(image_size=16))
    return parts["train"], parts["val"], parts["test"]


def test_pixels_average_each_channel_down():
    images = np.zeros((1, 4, 4, 3), np.uint8)
    images[0, :2, :2, 0] = 255  # the top-left quarter of the red channel
    x = pixels(ImageSet(images, np.zeros(1, np.int64), ["a"]), 2)
    red = x.reshape(1, 3, 2, 2)[0, 0]
    np.testing.assert_allclose(red, [[1.0, 0.0], [0.0, 0.0]])
    assert x.shape == (1, 12) and x[0, 4:].max() == 0.0


def test_baselines_choose_c_on_val_and_score_test(digits):
    train, val, test = digits
    grid = [1e-4, 1.0]  # C = 1e-4 underfits: val must reject it
    out = pixel_baselines(train, val, test, 8, grid)
    assert set(out) == {"pixels-logreg", "pixels-svc"}
    logreg = out["pixels-logreg"]
    assert logreg["C"] == 1.0 and logreg["features"] == "8x8x3 pixels"
    direct = LogisticRegression(C=1.0, max_iter=5000).fit(pixels(train, 8), train.labels)
    expected = 100.0 * np.mean(direct.predict(pixels(test, 8)) == test.labels)
    assert logreg["top1"] == pytest.approx(expected, abs=1e-9)
    # what a reviewer checks first: a linear model on 8x8 pixels is strong on digits
    assert logreg["top1"] > 93.0 and out["pixels-svc"]["top1"] > 96.0
    assert out["pixels-svc"]["val_top1"] >= 95.0


def test_bad_grid_is_refused_with_its_key():
    with pytest.raises(Exception, match=r"evaluate.c_grid"):
        parse_params({"evaluate": {"c_grid": []}})
    with pytest.raises(Exception, match=r"evaluate.pixels"):
        parse_params({"evaluate": {"pixels": 0}})
