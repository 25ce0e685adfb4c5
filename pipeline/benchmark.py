"""The benchmark stage's in-process part: latency of every deployable model in torch and of
every timed artefact its manifest lists; and the p50 ratios people compare (unmerged over
merged, an unmergeable adapter over its plain backbone, WeCoLoRA's student over the teacher)."""

from __future__ import annotations

import torch

from pipeline import adapters, paths
from pipeline.artifacts import deployables, load_task, load_torch_folder, merges
from pipeline.config import Params
from pipeline.data import to_tensor
from pipeline.manifest import read_manifest
from pipeline.runtime.latency import p50_ratios, timed_rows, warn_unstable
from pipeline.runtime.open import open_backend
from pipeline.runtime.pytorch import TorchBackend
from pipeline.variants import Variant


def in_process(params: Params, variants: list[Variant]) -> list[dict]:
    """Rows of every deployable model on every backend at each benchmark batch size."""
    cfg = params.benchmark
    torch.set_num_threads(cfg.threads)
    images = to_tensor(load_task("test")[0].images).numpy()
    rows = []
    for name in deployables(variants):
        manifest = read_manifest(paths.ONNX / name)
        backends = [TorchBackend(load_torch_folder(manifest.torch_folder)[0])]
        backends += [open_backend(a, f, cfg.threads) for a, f in manifest.timed().items()]
        for backend in backends:
            rows += timed_rows(
                backend, images, cfg, variant=name, transport="in-process", concurrency=1, errors=0
            )
    warn_unstable(rows)
    return rows


def _by_batch(row: dict) -> tuple[str]:
    return (f"{row['backend']}@{row['batch_size']}",)


def _by_concurrency(row: dict) -> tuple[str]:
    return (f"{row['backend']}@c{row['concurrency']}",)


def ratios(rows: list[dict], variants: list[Variant]) -> dict:
    """The latency ratios of reports/benchmark.json (keys `backend@batch` in process,
    `backend@c<concurrency>` over HTTP)."""
    local = [r for r in rows if r["transport"] == "in-process"]
    served = [r for r in rows if r["transport"] == "http"]

    def merged(name: str) -> str:
        return f"{name}-merged"

    # an unmergeable adapter against the plain backbone of its role (its linear probe)
    plain = {
        v.name: f"{v.role}-linear"
        for v in variants
        if not merges(v) and adapters.has_adapters(v.method)
    }
    out = {
        "unmerged_over_merged": p50_ratios(local, "variant", merged, _by_batch),
        "served_unmerged_over_merged": p50_ratios(served, "variant", merged, _by_concurrency),
        "unmergeable_over_plain": p50_ratios(local, "variant", plain.get, _by_batch),
    }
    if any(v.name == "teacher-linear" for v in variants):  # the plain teacher WeCoLoRA shrinks
        out["over_teacher"] = p50_ratios(
            local,
            "variant",
            lambda n: "teacher-linear" if n.endswith("-wecolora-merged") else None,
            _by_batch,
        )
    return out
