"""evaluate: top-1 of every model on the test set, in torch and in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import torch

from pipeline import paths
from pipeline.artifacts import ADAPTER_META, deployables, load_deployable, load_task
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.data import to_tensor
from pipeline.io import read_json, write_json
from pipeline.plots import confusion_grid, confusion_matrix
from pipeline.train.loop import predict
from pipeline.variants import all_variants
from serve.backends import OnnxRuntimeBackend, run_batched


def main(argv: list[str]) -> None:
    params = load_params()
    (test,) = load_task("test")
    images = to_tensor(test.images).numpy()
    report, matrices = {}, {}
    for name, variant in deployables(all_variants(params)).items():
        model = load_deployable(name, variant)
        preds = predict(model, test).argmax(1).numpy()
        ort_preds = run_batched(
            OnnxRuntimeBackend(paths.ONNX / name / "model.onnx"), images
        ).argmax(1)
        trained = read_json(variant.folder / ADAPTER_META)
        report[name] = {
            "top1": float((preds == test.labels).mean() * 100),
            "top1_onnxruntime": float((ort_preds == test.labels).mean() * 100),
            # what the method trained: all of it, and without the task head
            "params_trainable": trained["params_trainable"],
            "params_adapter": trained["params_adapter"],
            "params_total": sum(p.numel() for p in model.parameters()),
        }
        if name == variant.name:  # a merged form predicts the same: one matrix per variant
            matrices[name] = confusion_matrix(test.labels, preds, len(test.classes))
        rows = [
            {"actual": test.classes[a], "predicted": test.classes[p]}
            for a, p in zip(test.labels, preds)
        ]
        write_json(paths.PLOTS / "confusion" / f"{name}.json", rows)
        print(
            f"{name}: top-1 {report[name]['top1']:.2f}% (torch), "
            f"{report[name]['top1_onnxruntime']:.2f}% (ONNX Runtime)"
        )
    write_json(paths.METRICS / "evaluate.json", report)
    confusion_grid(matrices, test.classes, paths.PLOTS / "confusion.png")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    np.set_printoptions(precision=3)
    run_stage(main)
