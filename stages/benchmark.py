"""benchmark: in-process latency and throughput of every model in torch and of every exported
artefact (ONNX Runtime fp32, optimised and INT8; TensorRT where an engine was built)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline import paths
from pipeline.artifacts import deployables, load_deployable, load_task, merges
from pipeline.bench import measure
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.data import to_tensor
from pipeline.export.files import artefacts
from pipeline.io import write_json
from pipeline.plots import latency_bars, ratio_bars
from pipeline.variants import all_variants
from serve.backends import TorchBackend, open_backend


def main(argv: list[str]) -> None:
    params = load_params()
    cfg = params.benchmark
    torch.set_num_threads(cfg.threads)
    images = to_tensor(load_task("test")[0].images).numpy()
    rows = []
    variants = all_variants(params)
    for name, variant in deployables(variants).items():
        backends = [TorchBackend(load_deployable(name, variant))]
        files = artefacts(paths.ONNX / name)
        backends += [open_backend(kind, path, cfg.threads) for kind, path in files.items()]
        for backend in backends:
            for bs in cfg.batch_sizes:
                x = np.resize(images, (bs, *images.shape[1:]))  # repeats images if bs > test set
                stats = measure(lambda b=backend, x=x: b.run(x), bs, cfg.warmup, cfg.iterations)
                rows.append({"variant": name, "backend": backend.name, "batch_size": bs, **stats})
                print(
                    f"{name:28s} {backend.name:22s} batch {bs:3d}: p50 {stats['p50_ms']:8.3f} ms"
                    f"  p99 {stats['p99_ms']:8.3f} ms  {stats['throughput']:9.1f} img/s"
                )
    ratios = _ratios(rows)
    report = {"rows": rows, "unmerged_over_merged": ratios}
    # an unmergeable adapter against the plain backbone of its role (its linear probe)
    plain = {v.name: f"{v.role}-linear" for v in variants if not merges(v) and v.method != "linear"}
    report["unmergeable_over_plain"] = {
        k: v for k, v in _ratios(rows, lambda name: plain.get(name, "")).items() if k in plain
    }
    if "teacher-linear" in params.train.variants:  # the plain teacher: what WeCoLoRA shrinks
        report["over_teacher"] = _ratios(rows, lambda name: "teacher-linear", "-wecolora-merged")
    write_json(paths.METRICS / "benchmark.json", report)
    latency_bars(rows, paths.PLOTS / "benchmark.png")
    ratio_bars(ratios, paths.PLOTS / "merge_speedup.png")


def _ratios(
    rows: list[dict],
    reference=lambda name: f"{name}-merged",
    suffix: str = "",
) -> dict[str, dict[str, float]]:
    """p50 latency of each model (names ending in `suffix`) over its reference model, same
    backend and batch size; by default each unmerged model over its merged form."""
    p50 = {(r["variant"], r["backend"], r["batch_size"]): r["p50_ms"] for r in rows}
    out: dict[str, dict[str, float]] = {}
    for (name, backend, bs), value in p50.items():
        ref = p50.get((reference(name), backend, bs))
        if ref and name.endswith(suffix):
            out.setdefault(name, {})[f"{backend}@{bs}"] = value / ref
    return out


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main)
