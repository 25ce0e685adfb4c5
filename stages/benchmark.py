"""benchmark: in-process latency and throughput of every model, torch vs ONNX Runtime."""

from __future__ import annotations

import numpy as np
import torch

from pipeline import paths
from pipeline.artifacts import deployables, load_deployable
from pipeline.bench import measure
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.data import load_split, to_tensor
from pipeline.io import write_json
from pipeline.plots import latency_bars, ratio_bars
from pipeline.variants import parse_variant
from serve.backends import OnnxRuntimeBackend, TorchBackend


def main(argv: list[str]) -> None:
    params = load_params()
    cfg = params.benchmark
    torch.set_num_threads(cfg.threads)
    images = to_tensor(load_split(paths.DOWNSTREAM / "test.npz").images).numpy()
    rows = []
    for name in deployables([parse_variant(n, params) for n in params.train.variants]):
        backends = [
            TorchBackend(load_deployable(name)),
            OnnxRuntimeBackend(paths.ONNX / name / "model.onnx", threads=cfg.threads),
        ]
        for backend in backends:
            for bs in cfg.batch_sizes:
                x = np.resize(images, (bs, *images.shape[1:]))  # repeats images if bs > test set
                stats = measure(lambda b=backend, x=x: b.run(x), bs, cfg.warmup, cfg.iterations)
                rows.append({"variant": name, "backend": backend.name, "batch_size": bs, **stats})
                print(
                    f"{name:28s} {backend.name:12s} batch {bs:3d}: p50 {stats['p50_ms']:8.3f} ms"
                    f"  p99 {stats['p99_ms']:8.3f} ms  {stats['throughput']:9.1f} img/s"
                )
    ratios = _ratios(rows)
    write_json(paths.METRICS / "benchmark.json", {"rows": rows, "unmerged_over_merged": ratios})
    latency_bars(rows, paths.PLOTS / "benchmark.png")
    ratio_bars(ratios, paths.PLOTS / "merge_speedup.png")


def _ratios(rows: list[dict]) -> dict[str, dict[str, float]]:
    """p50 latency of each unmerged model over its merged form, same backend and batch size."""
    p50 = {(r["variant"], r["backend"], r["batch_size"]): r["p50_ms"] for r in rows}
    out: dict[str, dict[str, float]] = {}
    for (name, backend, bs), value in p50.items():
        merged = p50.get((f"{name}-merged", backend, bs))
        if merged:
            out.setdefault(name, {})[f"{backend}@{bs}"] = value / merged
    return out


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main)
