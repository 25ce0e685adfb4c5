"""The train_benchmark stage's work: what adapter training costs against full fine-tuning of
the same backbone, per method: time per optimiser step, images/s and peak memory (random
weights: the cost does not depend on them). iDAT is measured as it trains, both of its models
in one step."""

from __future__ import annotations

import torch

from pipeline import adapters, models
from pipeline.config import ArchConfig, Params
from pipeline.distill import idat
from pipeline.train import seed_everything
from pipeline.train.loop import cross_entropy, pick_device
from pipeline.train.throughput import Workload, measure_training


def workload(params: Params, method: str) -> Workload:
    """The model and loss `method` trains: `full` trains every weight, `idat` the adapters of
    the backbone and of the smaller teacher together, any other name that adapter method."""
    cfg = params.benchmark.training

    def backbone(arch: ArchConfig) -> torch.nn.Module:
        kwargs = {**arch.kwargs, "img_size": cfg.image_size}
        return models.create(arch.arch, kwargs, cfg.num_classes)

    def adapted(arch: ArchConfig, name: str) -> torch.nn.Module:
        return adapters.inject(backbone(arch), name, **params.adapters.get(name, {}))

    if method == "full":
        return Workload(backbone(cfg.model).requires_grad_(True), cross_entropy)
    if method == "idat":
        pair = idat.Pair(
            adapted(cfg.model, cfg.idat_method), adapted(cfg.idat_teacher, cfg.idat_method)
        )
        return Workload(pair, idat.loss(params.distill.idat.kd, params.distill.idat.temperature))
    return Workload(adapted(cfg.model, method), cross_entropy)


def training_report(params: Params) -> dict:
    """reports/train_benchmark.json: a row per method of benchmark.training.methods, and each
    one's images/s and peak memory over full fine-tuning's."""
    cfg = params.benchmark.training
    torch.set_num_threads(params.benchmark.threads)
    device = pick_device()
    rows = []
    for method in cfg.methods:
        seed_everything(params.seed)
        stats = measure_training(
            workload(params, method),
            params.train,
            cfg.batch_size,
            cfg.image_size,
            cfg.num_classes,
            cfg.warmup,
            cfg.steps,
            device,
        )
        rows.append({"method": method, **stats})
        print(
            f"{method:14s} step p50 {stats['step_p50_ms']:9.2f} ms  "
            f"{stats['images_per_s']:9.1f} img/s  peak {stats['peak_memory_mib']:9.1f} MiB "
            f"({stats['memory_source']})  trainable {stats['params_trainable']:,}"
        )
    report: dict = {
        "model": cfg.model.arch,
        "image_size": cfg.image_size,
        "batch_size": cfg.batch_size,
        "device": str(device),
        "amp": params.train.amp and device.type == "cuda",
        "rows": rows,
    }
    full = next((r for r in rows if r["method"] == "full"), None)
    if full:
        report["over_full"] = {
            r["method"]: {
                "images_per_s": r["images_per_s"] / full["images_per_s"],
                "peak_memory": r["peak_memory_mib"] / full["peak_memory_mib"],
            }
            for r in rows
            if r is not full
        }
    return report
