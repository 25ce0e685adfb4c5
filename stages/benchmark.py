"""benchmark: in-process latency and throughput of every model in torch and of every exported
artefact (ONNX Runtime fp32, optimised and INT8; TensorRT where an engine was built); then the
same models served over HTTP (`python -m serve`, merged beside unmerged) under load from
`serve.bench` at several client concurrencies, with the server's batching and HTTP costs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pipeline import PipelineError, paths
from pipeline.artifacts import deployables, load_deployable, load_task, merges
from pipeline.bench import measure
from pipeline.cli import run_stage
from pipeline.config import TORCH_BACKENDS, Params, load_params
from pipeline.data import to_tensor
from pipeline.export import files, tensorrt
from pipeline.export.files import artefacts
from pipeline.io import write_json
from pipeline.plots import latency_bars, latency_throughput, ratio_bars
from pipeline.variants import Variant, all_variants
from serve.backends import TorchBackend, open_backend
from serve.bench import LoadConfig, load
from serve.launch import ServerProcess


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
                rows.append(
                    {
                        "variant": name,
                        "backend": backend.name,
                        "transport": "in-process",
                        "batch_size": bs,
                        "concurrency": 1,
                        "errors": 0,
                        **stats,
                    }
                )
                print(
                    f"{name:28s} {backend.name:22s} batch {bs:3d}: p50 {stats['p50_ms']:8.3f} ms"
                    f"  p99 {stats['p99_ms']:8.3f} ms  {stats['throughput']:9.1f} img/s"
                )
    http_rows, bars = served(params, variants, rows)
    rows += http_rows
    ratios = _ratios(rows)
    report = {
        "rows": rows,
        "unmerged_over_merged": ratios,
        "served_unmerged_over_merged": _ratios(rows, transport="http"),
        "serving": bars,
    }
    # an unmergeable adapter against the plain backbone of its role (its linear probe)
    plain = {v.name: f"{v.role}-linear" for v in variants if not merges(v) and v.method != "linear"}
    report["unmergeable_over_plain"] = {
        k: v for k, v in _ratios(rows, lambda name: plain.get(name, "")).items() if k in plain
    }
    if "teacher-linear" in params.train.variants:  # the plain teacher: what WeCoLoRA shrinks
        report["over_teacher"] = _ratios(rows, lambda name: "teacher-linear", "-wecolora-merged")
    write_json(paths.METRICS / "benchmark.json", report)
    latency_bars([r for r in rows if r["transport"] == "in-process"], paths.PLOTS / "benchmark.png")
    ratio_bars(ratios, paths.PLOTS / "merge_speedup.png")
    latency_throughput(
        [{**r, "model": r["variant"]} for r in http_rows],
        paths.PLOTS / "serving.png",
        "served over HTTP: latency against throughput (merged solid, unmerged dashed)",
    )


def _served_paths(variant: Variant, backend: str) -> dict[str, Path]:
    """The files a server of `backend` opens for a variant's merged and unmerged forms."""
    merged = variant.merged_name
    if backend in TORCH_BACKENDS:
        return {merged: paths.MERGED / merged, variant.name: variant.folder}
    if backend == "tensorrt":  # engines are built for what ships: the merged form
        plan = paths.ONNX / merged / files.PLAN
        return {merged: plan} if plan.is_file() else {}
    return {name: paths.ONNX / name / files.ONNX for name in (merged, variant.name)}


def served(params: Params, variants: list[Variant], in_process: list[dict]) -> tuple[list, dict]:
    """HTTP rows per backend (one server each, all chosen models side by side), and the two
    serving costs measured on the first chosen merged model in ONNX Runtime: dynamic batching
    on against off at the top concurrency, and served against in-process throughput with
    requests of the largest benchmark batch."""
    cfg = params.benchmark.serve
    pairs = [v for v in variants if merges(v) and (cfg.variants is None or v.name in cfg.variants)]
    missing = sorted(set(cfg.variants or []) - {v.name for v in pairs})
    if missing:
        raise PipelineError(
            f"benchmark.serve.variants: {missing[0]!r} is not a variant with a merged form"
        )
    if not pairs:
        return [], {}
    load_cfg = LoadConfig(
        concurrency=cfg.concurrency,
        window_ms=cfg.window_ms,
        stability=cfg.stability,
        max_windows=cfg.max_windows,
        warmup_s=cfg.warmup_s,
    )
    server_args = [
        "--threads",
        str(params.benchmark.threads),
        "--max-batch-size",
        str(params.export.max_batch_size),
        "--max-queue-delay-us",
        str(params.export.max_queue_delay_us),
    ]

    def serve(backend: str, models: dict[str, Path], cfg: LoadConfig, *extra: str) -> list[dict]:
        specs = [arg for name, path in models.items() for arg in ("--model", f"{name}={path}")]
        with ServerProcess(["--backend", backend, *specs, *server_args, *extra]) as server:
            rows = load(server.url, list(models), cfg)
            failed = [r for r in rows if not r["requests"]]
            if failed:
                tail = "\n".join(list(server.output)[-5:])
                raise PipelineError(
                    f"served {backend}: {failed[0]['model']} answered no request "
                    f"({failed[0]['errors']} errors); the server said:\n{tail}"
                )
        return [
            {"variant": r.pop("model"), "backend": backend, "transport": "http", **r} for r in rows
        ]

    rows = []
    for backend in cfg.backends:
        models = {k: v for pair in pairs for k, v in _served_paths(pair, backend).items()}
        if backend == "tensorrt" and (reason := tensorrt.unavailable()):
            print(f"served tensorrt: skipped ({reason})")
        elif backend == "cuda-graph" and not torch.cuda.is_available():
            print("served cuda-graph: skipped (no CUDA GPU here)")
        elif models:
            rows += serve(backend, models, load_cfg)
    probe = pairs[0].merged_name
    probe_path = {probe: paths.ONNX / probe / files.ONNX}
    top = max(cfg.concurrency)
    off = serve(
        "onnxruntime", probe_path, replace(load_cfg, concurrency=[top]), "--no-dynamic-batching"
    )[0]
    on = next(
        (
            r
            for r in rows
            if (r["variant"], r["backend"], r["concurrency"]) == (probe, "onnxruntime", top)
        ),
        None,
    )
    bars: dict = {}
    if on:
        bars["dynamic_batching"] = {
            "model": probe,
            "backend": "onnxruntime",
            "concurrency": top,
            "throughput_on": on["throughput"],
            "throughput_off": off["throughput"],
            "on_over_off": on["throughput"] / off["throughput"],
        }
    big = max(params.benchmark.batch_sizes)
    direct = next(
        r["throughput"]
        for r in in_process
        if (r["variant"], r["backend"], r["batch_size"]) == (probe, "onnxruntime", big)
    )
    loaded = serve(
        "onnxruntime", probe_path, replace(load_cfg, batch_size=big, concurrency=[1, 2, 4])
    )
    best = max(loaded, key=lambda r: r["throughput"])
    bars["http_overhead"] = {
        "model": probe,
        "backend": "onnxruntime",
        "batch_size": big,
        "in_process_throughput": direct,
        "served_throughput": best["throughput"],
        "served_concurrency": best["concurrency"],
        "served_over_in_process": best["throughput"] / direct,
    }
    for key, value in bars.items():
        print(f"serving {key}: {value}")
    return rows, bars


def _ratios(
    rows: list[dict],
    reference=lambda name: f"{name}-merged",
    suffix: str = "",
    transport: str = "in-process",
) -> dict[str, dict[str, float]]:
    """p50 latency of each model (names ending in `suffix`) over its reference model, same
    backend, batch size and concurrency; by default each unmerged model over its merged form.
    Keys are `backend@batch` in process, `backend@c<concurrency>` over HTTP."""
    p50 = {
        (r["variant"], r["backend"], r["batch_size"], r["concurrency"]): r["p50_ms"]
        for r in rows
        if r["transport"] == transport and "p50_ms" in r
    }
    out: dict[str, dict[str, float]] = {}
    for (name, backend, bs, c), value in p50.items():
        ref = p50.get((reference(name), backend, bs, c))
        if ref and name.endswith(suffix):
            key = f"{backend}@{bs}" if transport == "in-process" else f"{backend}@c{c}"
            out.setdefault(name, {})[key] = value / ref
    return out


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main)
