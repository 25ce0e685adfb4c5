"""The evaluate stage's work: top-1 of every deployable model on the test set in torch, beside
the ONNX Runtime top-1 the export stage measured (its manifest), the parameter counts, a
confusion matrix per variant, and the pixel baselines (pipeline/baselines.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline import paths
from pipeline.artifacts import deployables, load_deployable, load_task
from pipeline.baselines import pixel_baselines
from pipeline.config import Params
from pipeline.io import read_json
from pipeline.manifest import read_manifest
from pipeline.plots import confusion_matrix
from pipeline.runtime.parity import top1
from pipeline.train.loop import predict
from pipeline.variants import all_variants


@dataclass
class Evaluation:
    report: dict = field(default_factory=dict)  # reports/evaluate.json
    classes: list[str] = field(default_factory=list)
    matrices: dict[str, np.ndarray] = field(default_factory=dict)  # one per variant


def evaluate_all(params: Params) -> Evaluation:
    train, val, test = load_task("train", "val", "test")
    out = Evaluation(classes=list(test.classes))
    for name, variant in deployables(all_variants(params)).items():
        model = load_deployable(name, variant)
        logits = predict(model, test).numpy()
        preds = logits.argmax(1)
        trained = read_json(variant.folder / paths.ADAPTER_META)
        out.report[name] = {
            "top1": top1(logits, test.labels),
            "top1_onnxruntime": read_manifest(paths.ONNX / name).artefacts["onnxruntime"]["top1"],
            # what the method trained: all of it, and without the task head
            "params_trainable": trained["params_trainable"],
            "params_adapter": trained["params_adapter"],
            "params_total": sum(p.numel() for p in model.parameters()),
        }
        if name == variant.name:  # a merged form predicts the same: one matrix per variant
            out.matrices[name] = confusion_matrix(test.labels, preds, len(test.classes))
        print(
            f"{name}: top-1 {out.report[name]['top1']:.2f}% (torch), "
            f"{out.report[name]['top1_onnxruntime']:.2f}% (ONNX Runtime)"
        )
    cfg = params.evaluate
    for name, row in pixel_baselines(train, val, test, cfg.pixels, cfg.c_grid).items():
        out.report[name] = row
        print(f"{name}: top-1 {row['top1']:.2f}% (C={row['C']:g}, val {row['val_top1']:.1f}%)")
    return out
