"""The continual stage's work: every learner's four runs through the task sequence, and the
deployable students exported to ONNX whole (query pass, prompt selection, prompted pass),
checked against torch on the test set, and timed against a plain ViT of the student's size:
what prompts cost to serve."""

from __future__ import annotations

import shutil

import torch

from pipeline import models, paths
from pipeline.artifacts import load_task
from pipeline.config import Params
from pipeline.continual.study import run_learner
from pipeline.continual.tasks import class_order, split_tasks
from pipeline.data import ImageSet, to_tensor
from pipeline.export.metadata import preprocessing
from pipeline.export.onnx import export_onnx
from pipeline.io import digest
from pipeline.manifest import KINDS
from pipeline.runtime import run_batched
from pipeline.runtime.latency import p50_ratios, timed_rows, warn_unstable
from pipeline.runtime.ort import OnnxRuntimeBackend
from pipeline.runtime.parity import parity, require_equal, top1
from pipeline.runtime.pytorch import TorchBackend
from pipeline.train.loop import predict

PLAIN = "plain-student"  # the student ViT with a head and no prompts: a merged model's cost
ONNX_FILE = KINDS["onnxruntime"].file


def continual_report(params: Params) -> dict:
    """reports/continual.json; removes the resume checkpoints once every run has finished."""
    cfg = params.continual
    train, val, test = load_task("train", "val", "test")
    order = class_order(len(train.classes), cfg.class_order)
    tasks = {
        name: split_tasks(data, order, cfg.tasks)
        for name, data in (("train", train), ("val", val), ("test", test))
    }
    print(f"continual: {cfg.tasks} tasks of {len(order) // cfg.tasks} classes, order {order}")
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
            exported[f"{learner}-{run}"] = export_student(params, f"{learner}-{run}", model, test)
        deployed[learner] = students["cdl"]
    report = {
        "class_order": order,
        "accuracy": accuracy,
        "cdl_over_student": {
            learner: runs["cdl"]["average_accuracy"] - runs["student"]["average_accuracy"]
            for learner, runs in accuracy.items()
        },
        "export": exported,
        "latency": latency(params, deployed, test),
    }
    shutil.rmtree(checkpoints, ignore_errors=True)  # every run finished: nothing to resume
    return report


def export_student(
    params: Params, name: str, model: torch.nn.Module, test: ImageSet
) -> dict[str, float]:
    """The whole two-pass model to ONNX; its logits on the test set against torch's."""
    path = export_onnx(
        model,
        paths.CONTINUAL / name / ONNX_FILE,
        params.data.image_size,
        params.export.opset,
        metadata=preprocessing(test.classes),
    )
    reference = predict(model, test).numpy()
    logits = run_batched(OnnxRuntimeBackend(path), to_tensor(test.images).numpy())
    stats = parity(reference, logits, test.labels)
    figures = {
        "max_abs_diff": stats["max_abs_diff"],
        "top1_torch": top1(reference, test.labels),
        "top1_onnxruntime": stats["top1"],
    }
    print(f"{name}: exported to {path}, {figures}")
    tolerance = params.export.tolerance  # prompt selection may flip on a near tie: diff alone
    require_equal(name, "ONNX Runtime", stats, tolerance, "export.tolerance", agreement=False)
    return figures


def latency(params: Params, deployed: dict[str, torch.nn.Module], test: ImageSet) -> dict:
    """p50/p99 and throughput of each learner's deployable student and of the plain student
    ViT, in torch and ONNX Runtime; the ratio prompted / plain of p50 per backend and batch."""
    cfg = params.benchmark
    torch.set_num_threads(cfg.threads)
    images = to_tensor(test.images).numpy()
    plain = models.load_model(paths.BACKBONES / "student", len(test.classes)).eval()
    export_onnx(
        plain,
        paths.CONTINUAL / PLAIN / ONNX_FILE,
        params.data.image_size,
        params.export.opset,
        metadata=preprocessing(test.classes),
    )
    rows = []
    for name, model in {PLAIN: plain, **deployed}.items():
        onnx_file = paths.CONTINUAL / (name if name == PLAIN else f"{name}-cdl") / ONNX_FILE
        for backend in (TorchBackend(model), OnnxRuntimeBackend(onnx_file, cfg.threads)):
            rows += timed_rows(backend, images, cfg, model=name)
    warn_unstable(rows)
    ratios = p50_ratios(
        rows,
        "model",
        lambda n: None if n == PLAIN else PLAIN,
        lambda r: (r["backend"], str(r["batch_size"])),
    )
    return {"rows": rows, "prompted_over_plain": ratios}
