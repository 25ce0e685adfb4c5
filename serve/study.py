"""The benchmark stage's served study: the deployable models served over HTTP (`python -m serve`,
one server per backend, merged beside unmerged) under `serve.bench` load at each concurrency;
two serving costs: dynamic batching on against off, and HTTP against in process; and the
yardstick: the same optimised ONNX graph served by this server and by a real Triton (its Python
backend running the graph in ONNX Runtime), over HTTP and gRPC, under the same load."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
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
from serve.triton import TritonServer
from serve.triton import unavailable as triton_unavailable


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
                out.append([_row(r, backend, cfg) for r in rows])
        return out


def _row(row: dict, backend: str, cfg: LoadConfig) -> dict:
    return {"variant": row.pop("model"), "backend": backend, "transport": cfg.protocol, **row}


def _key(row: dict) -> str:
    return f"b{row['batch_size']}@c{row['concurrency']}"


def yardstick(
    study: _Study, probe: str, batch_sizes: list[int], rounds: int
) -> tuple[list[dict], dict]:
    """`probe`'s optimised ONNX graph in this server and in Triton (the export stage's
    `<probe>-python` repository model), both up at once and driven in turn, level by level, over
    HTTP and gRPC, for `rounds` rounds (the order of the two servers alternating): a shared
    machine's drift then moves both sides of each ratio alike. The rows of every round; per
    batch and concurrency, the median over rounds of this server's throughput over Triton's and
    over its own HTTP, and at batch 1 and one client of Triton's p50 over ours; and the spread
    of each (max - min over the median, percent)."""
    artefact = "onnxruntime-optimized"
    model = ["--model", f"{probe}={paths.ONNX / probe}"]
    reason = triton_unavailable()
    if reason:
        print(f"served triton: skipped ({reason})")
    rows = []
    with contextlib.ExitStack() as stack:
        ours = ServerProcess(["--backend", artefact, *model, *study.args, "--grpc-port", "0"])
        servers = [(artefact, stack.enter_context(ours), probe)]
        if not reason:
            triton = TritonServer(paths.TRITON, [f"{probe}-python"])
            servers.append(("triton-python", stack.enter_context(triton), f"{probe}-python"))
        for n in range(rounds):
            for bs in batch_sizes:
                for c in study.load.concurrency:
                    for protocol in ("http", "grpc"):
                        cfg = study.load.model_copy(
                            update={"batch_size": bs, "concurrency": [c], "protocol": protocol}
                        )
                        for backend, server, name in servers[:: 1 if n % 2 == 0 else -1]:
                            url = server.grpc_url if protocol == "grpc" else server.url
                            (row,) = load(url, [name], cfg)
                            rows.append({**_row({**row, "model": probe}, backend, cfg), "round": n})
    return rows, _yardstick_ratios(rows, artefact)


def _yardstick_ratios(rows: list[dict], artefact: str) -> dict:
    by = {(r["round"], r["backend"], r["transport"], _key(r)): r for r in rows}
    samples: dict[str, dict[str, list[float]]] = {"grpc_over_http": {}, "vs_triton": {}}
    for r in (r for r in rows if r["backend"] == artefact):
        key, n = _key(r), r["round"]
        if r["transport"] == "grpc":
            http = by[n, artefact, "http", key]
            samples["grpc_over_http"].setdefault(key, []).append(
                r["throughput"] / http["throughput"]
            )
        if peer := by.get((n, "triton-python", r["transport"], key)):
            ratio = r["throughput"] / peer["throughput"]
            samples["vs_triton"].setdefault(f"{r['transport']}_{key}", []).append(ratio)
            if r["batch_size"] == 1 and r["concurrency"] == 1:
                p50 = peer["p50_ms"] / r["p50_ms"]
                samples["vs_triton"].setdefault(f"p50_{r['transport']}_{key}", []).append(p50)
    bars: dict = {}
    for what, figures in samples.items():
        bars[what] = {k: float(np.median(v)) for k, v in figures.items()}
        bars[f"{what}_spread_pct"] = {
            k: float((max(v) - min(v)) / np.median(v) * 100) for k, v in figures.items()
        }
    return bars


def served(
    params: Params, variants: list[Variant], in_process: list[dict]
) -> tuple[list, dict, list]:
    """HTTP rows per backend (one server each, all chosen models side by side); the two
    serving costs measured on the first chosen merged model in ONNX Runtime: dynamic batching
    on against off at the top concurrency, and served against in-process throughput with
    requests of the largest benchmark batch; and the yardstick's rows against Triton."""
    pairs = _pairs(params, variants)
    if not pairs:
        return [], {}, []
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
    compared: list[dict] = []
    if study.load.yardstick:
        compared, ratios = yardstick(study, probe, sorted({1, big}), study.load.yardstick)
        bars.update(ratios)
    for key, value in bars.items():
        print(f"serving {key}: {value}")
    return rows, bars, compared
