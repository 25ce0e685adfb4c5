"""Each stage's report in two files: the whole report, an output DVC caches
(`reports/<stage>.json`), and the few figures a person compares between runs, flat
(`metrics/<stage>.json`, kept in git, so `dvc exp show` and `dvc metrics diff` read every
experiment's).

A summary maps a metric to {name: figure} (DVC shows `top1.student-lora`); figures keep four
significant digits, so runs differ by what they measured, not by float noise in the file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from statistics import median

from pipeline import paths
from pipeline.io import write_json

Summary = dict[str, dict[str, float | int | str | None]]


def _figure(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.4g}")


def _worst(values: Iterable[float | None], pick: Callable = max) -> float | None:
    values = [v for v in values if v is not None]
    return _figure(pick(values)) if values else None


def _geomean(values: list[float]) -> float | None:
    return _figure(math.exp(sum(map(math.log, values)) / len(values))) if values else None


def prepare(report: dict) -> Summary:
    task = report["downstream"]
    return {
        "images": {split: task[split] for split in ("train", "val", "test")},
        "classes": {"downstream": len(task["classes"]), "source": report["source"]["classes"]},
    }


def merge(report: dict) -> Summary:
    return {
        "parity": {
            "models": len(report),
            "max_abs_diff": _worst(m["max_abs_diff"] for m in report.values()),
            "top1_agreement_min": _worst((m["top1_agreement"] for m in report.values()), min),
        }
    }


# the export report's prefixes of each form it checks against torch ("": the plain ONNX)
_FORMS = ("", "optimized_", "fp16_", "int8_", "int8_static_", "openvino_", "openvino_bf16_")
_FORMS += ("openvino_int8_", "tensorrt_")


def export(report: dict) -> Summary:
    models = report["models"].values()
    out: Summary = {"max_abs_diff": {}, "top1_drop_max": {}}
    for prefix in _FORMS:
        form = prefix.rstrip("_") or "onnx"
        if any(f"{prefix}top1" in m for m in models):
            out["max_abs_diff"][form] = _worst(m.get(f"{prefix}max_abs_diff") for m in models)
            out["top1_drop_max"][form] = _worst(m.get(f"{prefix}top1_drop") for m in models)
    out["recommended"] = {
        name: m["recommended"] for name, m in report["models"].items() if "recommended" in m
    }
    return out


def evaluate(report: dict) -> Summary:
    return {
        "top1": {name: _figure(m["top1"]) for name, m in report.items()},
        "onnx_top1_gap": {
            "max": _worst(
                abs(m["top1"] - m["top1_onnxruntime"])
                for m in report.values()
                if "top1_onnxruntime" in m
            )
        },
    }


def benchmark(report: dict) -> Summary:
    """Per backend: the median p50 over the merged models at the smallest and largest batch,
    the geometric mean of unmerged / merged, and the served figures at the top concurrency."""
    local = [r for r in report["rows"] if r["transport"] == "in-process"]
    served = [r for r in report["rows"] if r["transport"] == "http"]
    out: Summary = {"p50_ms": {}, "unmerged_over_merged": {}, "served_images_per_s": {}}
    merged = [r for r in local if r["variant"].endswith("-merged")]
    sizes = sorted({r["batch_size"] for r in merged})
    for backend in dict.fromkeys(r["backend"] for r in merged):
        for bs in dict.fromkeys([sizes[0], sizes[-1]]):
            p50 = [r["p50_ms"] for r in merged if r["backend"] == backend and r["batch_size"] == bs]
            if p50:
                out["p50_ms"][f"{backend}@{bs}"] = _figure(median(p50))
    for key in ("unmerged_over_merged", "served_unmerged_over_merged"):
        by_backend: dict[str, list[float]] = {}
        for per_model in report.get(key, {}).values():
            for where, ratio in per_model.items():  # where: backend@batch or backend@c<n>
                by_backend.setdefault(where.split("@")[0], []).append(ratio)
        out[key] = {backend: _geomean(values) for backend, values in by_backend.items()}
    if served:
        top = max(r["concurrency"] for r in served)
        for backend in dict.fromkeys(r["backend"] for r in served):
            tput = [
                r["throughput"]
                for r in served
                if r["backend"] == backend
                and r["concurrency"] == top
                and r["variant"].endswith("-merged")
            ]
            if tput:
                out["served_images_per_s"][f"{backend}@c{top}"] = _figure(median(tput))
    for key in ("vs_triton", "grpc_over_http"):  # this server against Triton; gRPC over HTTP
        if figures := report["serving"].get(key):
            out[key] = {name: _figure(v) for name, v in figures.items()}
    out["stability"] = {"unstable_rows": len(report["unstable"]), "rows": len(report["rows"])}
    return out


def reference(report: dict) -> Summary:
    rows = report["rows"]
    out: Summary = {
        "p50_ms": {f"{r['backend']}@{r['batch_size']}": _figure(r["p50_ms"]) for r in rows},
        "best": {f"@{bs}": best["backend"] for bs, best in report["best"].items()},
    }
    out["stability"] = {"unstable_rows": len(report["unstable"]), "rows": len(rows)}
    return out


def train_benchmark(report: dict) -> Summary:
    rows = report["rows"]
    return {
        "images_per_s": {r["method"]: _figure(r["images_per_s"]) for r in rows},
        "peak_memory_mib": {r["method"]: _figure(r["peak_memory_mib"]) for r in rows},
    }


def continual(report: dict) -> Summary:
    return {
        "average_accuracy": {
            f"{learner}-{model}": _figure(result["average_accuracy"])
            for learner, models in report["accuracy"].items()
            for model, result in models.items()
        },
        "cdl_over_student": {k: _figure(v) for k, v in report["cdl_over_student"].items()},
    }


def seeds(report: dict) -> Summary:
    """Mean and std over seeds of every run, and of each paired difference."""
    groups = {"runs": report["runs"], "paired": report["paired"]}
    out: Summary = {
        stat: {k: _figure(v[stat]) for g in groups.values() for k, v in g.items()}
        for stat in ("mean", "std")
    }
    out["study"] = {"seeds": len(report["seeds"]), "idat_kd_by_val": report["idat_kd_by_val"]}
    return out


SUMMARIES: dict[str, Callable[[dict], Summary]] = {
    "prepare": prepare,
    "merge": merge,
    "export": export,
    "evaluate": evaluate,
    "benchmark": benchmark,
    "reference": reference,
    "train_benchmark": train_benchmark,
    "continual": continual,
    "seeds": seeds,
}


def save(stage: str, report: dict) -> None:
    """`reports/<stage>.json` whole, then `metrics/<stage>.json` its summary."""
    write_json(paths.REPORTS / f"{stage}.json", report)
    write_json(paths.METRICS / f"{stage}.json", SUMMARIES[stage](report))
