"""Which artefact of a shipped model to deploy on this machine: the fastest, by a short latency
probe at each batch size, of the timed ones whose test top-1 is within export.max_top1_drop
points of torch (`within_bound` in the manifest). The probe follows benchmark.stability and
benchmark.max_windows like every latency row."""

from __future__ import annotations

import numpy as np

from pipeline.manifest import KINDS, Manifest
from pipeline.runtime.latency import flag, measure
from pipeline.runtime.open import open_backend

PROBE_WARMUP, PROBE_ITERATIONS = 3, 15


def recommend(
    manifest: Manifest,
    images: np.ndarray,
    batch_sizes: list[int],
    threads: int,
    stability: float,
    max_windows: int,
) -> dict:
    """`recommended` (the fastest at the largest batch size), the fastest per batch size, the
    probe's p50 per image (ms) of every artefact within the bound, and `probe_unstable`: the
    `artefact@batch` probes that never settled (each printed with its flag)."""
    eligible = [a for a, e in manifest.artefacts.items() if KINDS[a].timed and e["within_bound"]]
    probe: dict[str, dict[str, float]] = {}
    unsettled = []
    for artefact in eligible:
        backend = open_backend(artefact, manifest.path(artefact), threads)
        probe[artefact] = {}
        for bs in batch_sizes:
            x = np.resize(images, (bs, *images.shape[1:]))
            stats = measure(
                lambda x=x, b=backend: b.run(x),
                bs,
                PROBE_WARMUP,
                PROBE_ITERATIONS,
                stability,
                max_windows,
            )
            probe[artefact][str(bs)] = stats["p50_ms"] / bs
            if not stats["stable"]:
                unsettled.append(f"{artefact}@{bs}")
                print(f"{manifest.name}: latency probe of {artefact} at batch {bs}{flag(stats)}")
    fastest = {str(bs): min(probe, key=lambda a, bs=bs: probe[a][str(bs)]) for bs in batch_sizes}
    return {
        "recommended": fastest[str(max(batch_sizes))],
        "recommended_by_batch": fastest,
        "probe_ms_per_image": probe,
        "probe_unstable": unsettled,
    }
