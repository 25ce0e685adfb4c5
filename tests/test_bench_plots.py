import time

import numpy as np
import pytest

from pipeline.plots import confusion_grid, confusion_matrix, latency_bars
from pipeline.runtime.latency import measure

PNG = b"\x89PNG\r\n\x1a\n"


def test_measure_reports_ordered_percentiles_and_throughput():
    calls = []
    # windows always agree here (stability 1000 %), so the count is the warm-up plus the 10 timed
    # calls on a noisy machine too; the settling rule has its own tests in test_latency.py
    stats = measure(
        lambda: calls.append(time.sleep(0.002)),
        batch_size=8,
        warmup=2,
        iterations=10,
        stability=1000,
        max_windows=3,
    )
    assert len(calls) == 12
    assert 2.0 <= stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"]
    assert stats["throughput"] == pytest.approx(8 / (stats["mean_ms"] / 1e3))


def test_confusion_matrix_counts():
    cm = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_plots_are_png(tmp_path):
    cm = confusion_matrix(np.array([0, 1]), np.array([0, 1]), 2)
    confusion_grid({"a": cm, "b": cm}, ["x", "y"], tmp_path / "c.png")
    rows = [
        {"variant": v, "backend": b, "batch_size": bs, "p50_ms": 1.0, "p99_ms": 2.0}
        for v in ("m", "m-merged")
        for b in ("torch", "onnxruntime")
        for bs in (1, 32)
    ]
    latency_bars(rows, tmp_path / "l.png")
    for name in ("c.png", "l.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
