"""In-process latency: percentiles of single calls after a warm-up, as benchmark rows, and the
ratios of one model's p50 to another's."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import torch

from pipeline.runtime.base import Backend


def measure(
    call: Callable[[], object],
    batch_size: int,
    warmup: int,
    iterations: int,
) -> dict[str, float]:
    """p50/p90/p95/p99 latency (ms) of `call` and throughput (images/s) from the mean latency."""
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
        "p90_ms": float(np.percentile(ms, 90)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "throughput": float(batch_size / times.mean()),
    }


def label(backend: Backend) -> str:
    """A backend's name in rows: a PyTorch backend's carries its precision (torch-bf16)."""
    return getattr(backend, "label", backend.name)


def _call(backend: Backend, x: np.ndarray, on_device: bool) -> tuple[Callable[[], object], str]:
    """What one timed call runs, and where its inputs live. With `on_device`, a PyTorch backend
    on a GPU is timed on a batch already there, synchronised after: the model's figure, not the
    host-to-device copy's."""
    device = getattr(backend, "device", None)
    if on_device and backend.on_gpu and device is not None:
        x_dev = torch.from_numpy(x).to(device, backend.dtype)

        def call() -> None:
            with torch.inference_mode():
                backend.forward(x_dev)
            torch.cuda.synchronize(device)

        return call, "device"
    return (lambda: backend.run(x)), "host"


def latency_rows(
    backend: Backend,
    images: np.ndarray,
    batch_sizes: Iterable[int],
    warmup: int,
    iterations: int,
    on_device: bool = False,
    max_images: int | None = None,
    **fields: object,
) -> list[dict]:
    """One row per batch size: `fields`, the backend's label, the batch size and the figures of
    `measure`; a batch larger than `images` repeats them. `on_device` adds where the inputs
    lived (see `_call`). `max_images` caps the images timed per row (at least 3 calls), so a
    large batch of a large model does not take `iterations` full calls. Each row is printed as
    it is measured."""
    rows = []
    for bs in batch_sizes:
        x = np.resize(images, (bs, *images.shape[1:]))
        call, inputs = _call(backend, x, on_device)
        calls = min(iterations, max(3, max_images // bs)) if max_images else iterations
        stats = measure(call, bs, warmup, calls)
        row = {**fields, "backend": label(backend), "batch_size": bs, **stats}
        if on_device:
            row["inputs"] = inputs
        rows.append(row)
        name = next(iter(fields.values()), "")
        print(
            f"{name!s:28s} {row['backend']:26s} batch {bs:3d}: p50 {stats['p50_ms']:8.3f} ms"
            f"  p99 {stats['p99_ms']:8.3f} ms  {stats['throughput']:9.1f} img/s"
        )
    return rows


def p50_ratios(
    rows: Iterable[dict],
    model: str,
    reference: Callable[[str], str | None],
    group: Callable[[dict], tuple],
) -> dict:
    """p50 of each model over the p50 of its `reference` model (None: none) in the same group:
    `{name: {*group(row): ratio}}`, nested one level per element of the group's key. `model` is
    the row field that names the model."""
    p50 = {(r[model], group(r)): r["p50_ms"] for r in rows if "p50_ms" in r}
    out: dict = {}
    for (name, key), value in p50.items():
        ref = p50.get((reference(name), key))
        if ref:
            node = out.setdefault(name, {})
            *path, last = key
            for k in path:
                node = node.setdefault(k, {})
            node[last] = value / ref
    return out
