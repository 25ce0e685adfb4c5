"""The reference stage's verdicts on rows: which artefacts may be `best` (their top-1 held on
every shipped model), and `best` per batch size against the two baselines."""

from __future__ import annotations

import pytest

from pipeline.reference import best_rows, highlights, shippable


def _row(backend: str, bs: int, p50: float) -> dict:
    return {"backend": backend, "batch_size": bs, "p50_ms": p50}


def test_shippable_needs_the_bound_on_every_shipped_model():
    def shipped(openvino_int8: bool) -> dict:
        return {
            "recommended": "x",
            "int8_within_bound": True,
            "openvino_int8_within_bound": openvino_int8,
        }

    models = {
        "a-merged": shipped(True),
        "b-merged": shipped(False),
        "a": {"openvino_within_bound": True},  # not shipped: not asked
    }
    eligible = shippable({"models": models})
    assert "onnxruntime-int8" in eligible and "onnxruntime" in eligible
    assert "openvino-int8" not in eligible, "one shipped model lost more than the bound"
    assert "tensorrt" not in eligible, "never built here: no figure says it held"
    assert shippable(None) == {"onnxruntime", "onnxruntime-optimized", "openvino"}


def test_best_is_the_fastest_eligible_row_with_its_ratios():
    rows = [
        _row("onnxruntime-int8", 1, 25.0),
        _row("openvino-default", 1, 30.0),
        _row("openvino-int8", 1, 20.0),
        _row("torch-bf16", 1, 10.0),  # faster, but not an artefact the export ships
        _row("onnxruntime-int8", 32, 900.0),
        _row("openvino-int8", 32, 600.0),
    ]
    best = best_rows(rows, {"onnxruntime-int8", "openvino-int8"})
    assert best["1"] == {
        "backend": "openvino-int8",
        "p50_ms": 20.0,
        "over_onnxruntime_int8": pytest.approx(1.25),
        "over_peer": pytest.approx(1.5),
    }
    assert best["32"]["over_onnxruntime_int8"] == pytest.approx(1.5)
    assert "over_peer" not in best["32"], "no peer row at 32: no ratio made up"
    assert best_rows(rows, set()) == {}
    labels = highlights({"best": best})
    assert labels["openvino-int8"] == "best at batch 1, 32"
    assert labels["openvino-default"].endswith("(peer)")
