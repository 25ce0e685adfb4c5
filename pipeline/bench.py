"""In-process latency measurement: percentiles of single calls after a warm-up."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def measure(
    call: Callable[[], object],
    batch_size: int,
    warmup: int,
    iterations: int,
) -> dict[str, float]:
    """p50/p95/p99 latency (ms) of `call` and throughput (images/s) from the mean latency."""
    for _ in range(warmup):
        call()
    times = np.empty(iterations)
    for i in range(iterations):
        t0 = time.perf_counter()
        call()
        times[i] = time.perf_counter() - t0
    ms = times * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "throughput": float(batch_size / times.mean()),
    }
