"""benchmark: in-process latency and throughput of every model in torch and of every exported
artefact (ONNX Runtime fp32, optimised and INT8; TensorRT where an engine was built); then the
same models served over HTTP (`python -m serve`, merged beside unmerged) under load from
`serve.bench` at several client concurrencies, with the server's batching and HTTP costs, and
the first served merged model's optimised graph in this server against a real Triton."""

from __future__ import annotations

import torch

from pipeline import paths, summary
from pipeline.benchmark import in_process, ratios
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.plots import latency_bars, latency_throughput, ratio_bars
from pipeline.runtime.latency import unstable
from pipeline.variants import all_variants
from serve.study import served


def main(argv: list[str]) -> None:
    params = load_params()
    variants = all_variants(params)
    local = in_process(params, variants)
    http, serving, compared = served(params, variants, local)
    rows = local + http
    report = {
        "rows": rows,
        "unstable": unstable(rows + compared),
        **ratios(rows, variants),
        "serving": serving,
        "yardstick": compared,
    }
    summary.save("benchmark", report)
    latency_bars(local, paths.PLOTS / "benchmark.png")
    ratio_bars(report["unmerged_over_merged"], paths.PLOTS / "merge_speedup.png")
    latency_throughput(
        [{**r, "model": r["variant"]} for r in http],
        paths.PLOTS / "serving.png",
        "served over HTTP: latency against throughput (merged solid, unmerged dashed)",
    )
    latency_throughput(
        [
            {
                **r,
                "model": f"{r['backend']} {r['transport']}",
                "backend": f"batch {r['batch_size']}",
            }
            for r in compared
            if r["round"] == 0
        ],
        paths.PLOTS / "yardstick.png",
        "the same optimised ONNX graph, first round: this server (onnxruntime-optimized) "
        "against Triton",
    )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main)
