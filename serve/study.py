"""The benchmark stage's served study: the deployable models served over HTTP (`python -m serve`,
one server per backend, merged beside unmerged) under `serve.bench` load at each concurrency,
and two serving costs: dynamic batching on against off, and HTTP against in process."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline import PipelineError, paths
from pipeline.artifacts import merges
from pipeline.config import LoadConfig, Params
from pipeline.manifest import read_manifest
from pipeline.runtime import TORCH_BACKENDS
from pipeline.runtime.tensorrt import unavailable as tensorrt_unavailable
from pipeline.variants import Variant
from serve.bench import load
from serve.launch import ServerProcess


def _pairs(params: Params, variants: list[Variant]) -> list[Variant]:
    """The variants whose merged and unmerged forms are served (benchmark.serve.variants, which
    the params checks keep to this run's variants with a merged form)."""
    chosen = params.benchmark.serve.variants
    return [v for v in variants if merges(v) and (chosen is None or v.name in chosen)]


def _served(pairs: list[Variant], backend: str) -> dict[str, Path]:
    """name -> exported folder of each model a server of `backend` can run (an engine exists
    only for what ships: the merged form)."""
    out = {}
    for name in (n for v in pairs for n in (v.merged_name, v.name)):
        folder = paths.ONNX / name
        if backend in TORCH_BACKENDS or backend in read_manifest(folder).artefacts:
            out[name] = folder
    return out


class _Study:
    def __init__(self, params: Params) -> None:
        self.load = params.benchmark.serve  # a LoadConfig, with what to serve
        self.args = [
            "--threads",
            str(params.benchmark.threads),
            "--max-batch-size",
            str(params.export.max_batch_size),
            "--max-queue-delay-us",
            str(params.export.max_queue_delay_us),
        ]

    def serve(
        self,
        backend: str,
        models: dict[str, Path],
        loads: list[tuple[LoadConfig, list[str]]],
        *extra: str,
    ) -> list[list[dict]]:
        """One server of `backend` holding `models`, under each (load, models) of `loads` in
        turn; the HTTP rows of each."""
        specs = [arg for name, path in models.items() for arg in ("--model", f"{name}={path}")]
        out = []
        with ServerProcess(["--backend", backend, *specs, *self.args, *extra]) as server:
            for cfg, names in loads:
                rows = load(server.url, names, cfg)
                failed = [r for r in rows if not r["requests"]]
                if failed:
                    tail = "\n".join(list(server.output)[-5:])
                    raise PipelineError(
                        f"served {backend}: {failed[0]['model']} answered no request "
                        f"({failed[0]['errors']} errors); the server said:\n{tail}"
                    )
                out.append(
                    [
                        {"variant": r.pop("model"), "backend": backend, "transport": "http", **r}
                        for r in rows
                    ]
                )
        return out


def served(params: Params, variants: list[Variant], in_process: list[dict]) -> tuple[list, dict]:
    """HTTP rows per backend (one server each, all chosen models side by side), and the two
    serving costs measured on the first chosen merged model in ONNX Runtime: dynamic batching
    on against off at the top concurrency, and served against in-process throughput with
    requests of the largest benchmark batch."""
    pairs = _pairs(params, variants)
    if not pairs:
        return [], {}
    study = _Study(params)
    probe = pairs[0].merged_name  # the serving costs are measured on it, in ONNX Runtime
    probe_folder = {probe: paths.ONNX / probe}
    big = max(params.benchmark.batch_sizes)
    # requests of the largest benchmark batch, on the same server as the main load
    batched = (study.load.model_copy(update={"batch_size": big, "concurrency": [1, 2, 4]}), [probe])
    rows, loaded = [], None
    for backend in study.load.backends:
        if backend == "tensorrt" and (reason := tensorrt_unavailable()):
            print(f"served tensorrt: skipped ({reason})")
        elif backend == "cuda-graph" and not torch.cuda.is_available():
            print("served cuda-graph: skipped (no CUDA GPU here)")
        elif models := _served(pairs, backend):
            extra = [batched] if backend == "onnxruntime" else []
            main, *more = study.serve(backend, models, [(study.load, list(models)), *extra])
            rows += main
            loaded = more[0] if more else loaded
    if loaded is None:
        (loaded,) = study.serve("onnxruntime", probe_folder, [batched])
    top = max(study.load.concurrency)
    alone = study.load.model_copy(update={"concurrency": [top]})
    ((off,),) = study.serve(
        "onnxruntime", probe_folder, [(alone, [probe])], "--no-dynamic-batching"
    )
    bars: dict = {}
    on = [
        r
        for r in rows
        if (r["variant"], r["backend"], r["concurrency"]) == (probe, "onnxruntime", top)
    ]
    if on:
        bars["dynamic_batching"] = {
            "model": probe,
            "backend": "onnxruntime",
            "concurrency": top,
            "throughput_on": on[0]["throughput"],
            "throughput_off": off["throughput"],
            "on_over_off": on[0]["throughput"] / off["throughput"],
        }
    direct = next(
        r["throughput"]
        for r in in_process
        if (r["variant"], r["backend"], r["batch_size"]) == (probe, "onnxruntime", big)
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
