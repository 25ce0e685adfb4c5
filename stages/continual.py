"""continual: class-incremental prompt learning with a teacher and a student (CDL).

The downstream data is cut into tasks by `continual.class_order`. For each prompt learner the
teacher, the student alone, the student with KD and the student with CDL-Prompt go through the
same task sequence (accuracy matrix, average accuracy, forgetting). The deployable students are
exported to ONNX whole (query pass, prompt selection, prompted pass), checked against torch on
the test set, and timed against a plain ViT of the student's size: what prompts cost to serve.
"""

from __future__ import annotations

import shutil

import numpy as np
import torch

from pipeline import PipelineError, models, paths
from pipeline.artifacts import load_task
from pipeline.bench import measure
from pipeline.cli import run_stage
from pipeline.config import Params, load_params
from pipeline.continual.study import run_learner
from pipeline.continual.tasks import class_order, split_tasks
from pipeline.data import to_tensor
from pipeline.export.metadata import preprocessing
from pipeline.export.onnx import export_onnx
from pipeline.io import digest, write_json
from pipeline.plots import continual_curves
from pipeline.train.loop import predict
from serve.backends import OnnxRuntimeBackend, TorchBackend, run_batched

PLAIN = "plain-student"  # the student ViT with a head and no prompts: a merged model's cost


def main(argv: list[str]) -> None:
    params = load_params()
    cfg = params.continual
    train, val, test = load_task("train", "val", "test")
    order = class_order(len(train.classes), cfg.class_order)
    tasks = {
        name: split_tasks(data, order, cfg.tasks)
        for name, data in (("train", train), ("val", val), ("test", test))
    }
    print(f"continual: {cfg.tasks} tasks of {len(order) // cfg.tasks} classes, order {order}")
    images = to_tensor(test.images).numpy()  # the test set as every backend takes it
    checkpoints = paths.CHECKPOINTS / "continual"
    inputs = digest(paths.BACKBONES, paths.DOWNSTREAM)
    accuracy, exported, deployed = {}, {}, {}
    for learner in cfg.learners:
        results, students = run_learner(
            params, learner, tasks, len(train.classes), checkpoints / learner, inputs
        )
        accuracy[learner] = results
        for run, figures in results.items():
            print(
                f"{learner:10s} {run:8s} average accuracy {figures['average_accuracy']:6.2f}%"
                f"  forgetting {figures['forgetting']:6.2f}%"
            )
        for run, model in students.items():
            exported[f"{learner}-{run}"] = _export(params, f"{learner}-{run}", model, test, images)
        deployed[learner] = students["cdl"]
    report = {
        "class_order": order,
        "accuracy": accuracy,
        "cdl_over_student": {
            learner: runs["cdl"]["average_accuracy"] - runs["student"]["average_accuracy"]
            for learner, runs in accuracy.items()
        },
        "export": exported,
        "latency": _latency(params, deployed, test, images),
    }
    write_json(paths.METRICS / "continual.json", report)
    continual_curves(accuracy, paths.PLOTS / "continual.png")
    shutil.rmtree(checkpoints, ignore_errors=True)  # every run finished: nothing to resume


def _export(
    params: Params, name: str, model: torch.nn.Module, test, images: np.ndarray
) -> dict[str, float]:
    """The whole two-pass model to ONNX; its logits on the test set against torch's."""
    path = export_onnx(
        model,
        paths.CONTINUAL / name / "model.onnx",
        params.data.image_size,
        params.export.opset,
        metadata=preprocessing(test.classes),
    )
    reference = predict(model, test).numpy()
    logits = run_batched(OnnxRuntimeBackend(path), images)
    diff = float(np.abs(logits - reference).max())
    figures = {
        "max_abs_diff": diff,
        "top1_torch": float((reference.argmax(1) == test.labels).mean() * 100),
        "top1_onnxruntime": float((logits.argmax(1) == test.labels).mean() * 100),
    }
    print(f"{name}: exported to {path}, {figures}")
    if diff > params.export.tolerance:
        raise PipelineError(
            f"{name}: ONNX Runtime differs from torch by {diff:.2e} on the test set "
            f"(export.tolerance {params.export.tolerance:.0e})"
        )
    return figures


def _latency(
    params: Params, deployed: dict[str, torch.nn.Module], test, images: np.ndarray
) -> dict:
    """p50/p99 and throughput of each learner's deployable student and of the plain student
    ViT, in torch and ONNX Runtime; the ratio prompted / plain of p50 per backend and batch."""
    cfg = params.benchmark
    torch.set_num_threads(cfg.threads)
    plain = models.load_model(paths.BACKBONES / "student", len(test.classes)).eval()
    export_onnx(
        plain,
        paths.CONTINUAL / PLAIN / "model.onnx",
        params.data.image_size,
        params.export.opset,
        metadata=preprocessing(test.classes),
    )
    rows = []
    for name, model in {PLAIN: plain, **deployed}.items():
        onnx_file = paths.CONTINUAL / (name if name == PLAIN else f"{name}-cdl") / "model.onnx"
        for backend in (TorchBackend(model), OnnxRuntimeBackend(onnx_file, cfg.threads)):
            for bs in cfg.batch_sizes:
                x = np.resize(images, (bs, *images.shape[1:]))
                stats = measure(lambda b=backend, x=x: b.run(x), bs, cfg.warmup, cfg.iterations)
                rows.append({"model": name, "backend": backend.name, "batch_size": bs, **stats})
                print(
                    f"{name:14s} {backend.name:12s} batch {bs:3d}: p50 {stats['p50_ms']:8.3f} ms"
                    f"  {stats['throughput']:9.1f} img/s"
                )
    p50 = {(r["model"], r["backend"], r["batch_size"]): r["p50_ms"] for r in rows}
    ratios = {
        learner: {
            backend: {
                str(bs): p50[learner, backend, bs] / p50[PLAIN, backend, bs]
                for bs in cfg.batch_sizes
            }
            for backend in ("torch", "onnxruntime")
        }
        for learner in deployed
    }
    return {"rows": rows, "prompted_over_plain": ratios}


if __name__ == "__main__":
    run_stage(main)
