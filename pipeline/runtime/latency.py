"""In-process latency: percentiles of single calls after a warm-up, timed in windows until the
windows agree, as benchmark rows with the machine's load while they ran; and the ratios of one
model's p50 to another's."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
import psutil
import torch

from pipeline.runtime.base import Backend

if TYPE_CHECKING:
    from pipeline.config import BenchmarkConfig

# serve.bench's (perf_analyzer's) rule, in process: the last this many windows must agree
AGREEING_WINDOWS = 3


def spread(windows: list[np.ndarray]) -> float:
    """The largest deviation of a window's median latency from the windows' average median, in
    percent of that average: the rule's measure, so a row is stable iff this is <= stability."""
    medians = np.array([np.median(w) for w in windows])
    avg = float(medians.mean())
    return float(np.abs(medians - avg).max() / avg * 100) if avg > 0 else 0.0


def _machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, every CPU, since boot."""
    t = psutil.cpu_times()
    # Linux counts guest time in user time too (as psutil.cpu_percent does)
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return total - t.idle - getattr(t, "iowait", 0.0), total


def _window(call: Callable[[], object], calls: int) -> np.ndarray:
    """The latency (s) of each of `calls` calls."""
    times = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        call()
        times[i] = time.perf_counter() - t0
    return times


def measure(
    call: Callable[[], object],
    batch_size: int,
    warmup: int,
    iterations: int,
    # benchmark.stability / max_windows's defaults, for a caller params do not reach (the
    # training benchmark's steps)
    stability: float = 10.0,
    max_windows: int = 8,
) -> dict[str, float | int | bool]:
    """p50/p90/p95/p99 latency (ms) of `call` and throughput (images/s) from the mean latency,
    after `warmup` calls. The `iterations` timed calls (at least 3) are split into 3 windows;
    while the windows' median latencies spread by more than `stability` percent (`spread`), one
    more window of a third of them, up to `max_windows` windows: on a quiet machine the cost is
    today's, only an unsettled one pays more. The figures pool the last 3 windows. With them:
    `stable`, `spread_pct`, `windows` (run in all), `other_cpu_pct` (the share of the machine's
    CPU time that other processes used meanwhile) and `loadavg_1m` at the end."""
    for _ in range(warmup):
        call()
    n = max(iterations, AGREEING_WINDOWS)
    windows: list[np.ndarray] = []
    busy0, total0 = _machine_cpu_s()
    own0 = time.process_time()  # every thread of this process: torch's intra-op pool too
    while len(windows) < AGREEING_WINDOWS or (
        spread(windows[-AGREEING_WINDOWS:]) > stability and len(windows) < max_windows
    ):
        k = len(windows) % AGREEING_WINDOWS  # the first 3 windows hold exactly n calls
        windows.append(_window(call, n // AGREEING_WINDOWS + (k < n % AGREEING_WINDOWS)))
    busy, total = _machine_cpu_s()
    other = (busy - busy0) - (time.process_time() - own0)
    last = windows[-AGREEING_WINDOWS:]
    spread_pct = spread(last)
    ms = np.concatenate(last) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "throughput": float(batch_size / ms.mean() * 1e3),
        "stable": spread_pct <= stability,
        "spread_pct": spread_pct,
        "windows": len(windows),
        # /proc/stat counts in ticks (10 ms): clamped, as a short row's figure is coarse
        "other_cpu_pct": float(np.clip(100 * other / max(total - total0, 1e-9), 0, 100)),
        "loadavg_1m": os.getloadavg()[0],
    }


def flag(stats: dict) -> str:
    """What a printed row ends with when it never settled; empty when it did."""
    if stats["stable"]:
        return ""
    return (
        f"  UNSTABLE: spread {stats['spread_pct']:.0f}% over {stats['windows']} windows,"
        f" other processes used {stats['other_cpu_pct']:.0f}% CPU"
    )


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
    stability: float,
    max_windows: int,
    on_device: bool = False,
    max_images: int | None = None,
    **fields: object,
) -> list[dict]:
    """One row per batch size: `fields`, the backend's label, the batch size and the figures of
    `measure` (under `stability` and `max_windows`); a batch larger than `images` repeats them.
    `on_device` adds where the inputs lived (see `_call`). `max_images` caps the images timed
    per row in the stable case (at least 3 calls), so a large batch of a large model does not
    take `iterations` full calls. Each row is printed as it is measured, flagged if unstable."""
    rows = []
    for bs in batch_sizes:
        x = np.resize(images, (bs, *images.shape[1:]))
        call, inputs = _call(backend, x, on_device)
        calls = min(iterations, max(3, max_images // bs)) if max_images else iterations
        stats = measure(call, bs, warmup, calls, stability, max_windows)
        row = {**fields, "backend": label(backend), "batch_size": bs, **stats}
        if on_device:
            row["inputs"] = inputs
        rows.append(row)
        name = next(iter(fields.values()), "")
        print(
            f"{name!s:28s} {row['backend']:26s} batch {bs:3d}: p50 {stats['p50_ms']:8.3f} ms"
            f"  p99 {stats['p99_ms']:8.3f} ms  {stats['throughput']:9.1f} img/s{flag(stats)}"
        )
    return rows


def timed_rows(
    backend: Backend, images: np.ndarray, cfg: BenchmarkConfig, **fields: object
) -> list[dict]:
    """`latency_rows` of `backend` under the benchmark's settings: its batch sizes, warm-up,
    calls and stability rule."""
    return latency_rows(
        backend,
        images,
        cfg.batch_sizes,
        cfg.warmup,
        cfg.iterations,
        cfg.stability,
        cfg.max_windows,
        **fields,
    )


def _name(row: dict) -> str:
    """`model backend@batch`: the model is the row's first field (see `latency_rows`)."""
    first = next(iter(row))
    model = "" if first == "backend" else f"{row[first]} "
    return f"{model}{row['backend']}@{row['batch_size']}"


def unstable(rows: Iterable[dict]) -> list[str]:
    """`model backend@batch` of each row that never settled (`stable` false)."""
    return [_name(r) for r in rows if r.get("stable") is False]


def warn_unstable(rows: list[dict]) -> None:
    """One warning line after a stage's rows if any never settled: their figures (and ratios
    built on them) measured a busy machine, and DVC will keep them until the stage reruns."""
    names = unstable(rows)
    if names:
        other = max(r["other_cpu_pct"] for r in rows if r.get("stable") is False)
        print(
            f"WARNING: {len(names)} of {len(rows)} latency rows never settled within"
            f" benchmark.stability after benchmark.max_windows windows (other processes used up"
            f" to {other:.0f}% CPU): {', '.join(names)}. Rerun the stage on a quiet machine"
            " (dvc repro --force <stage>)."
        )


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
