"""evaluate: top-1 of every model on the test set, in torch and in ONNX Runtime."""

from __future__ import annotations

import torch

from pipeline import paths
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.evaluation import evaluate_all
from pipeline.io import write_json
from pipeline.plots import confusion_grid


def main(argv: list[str]) -> None:
    result = evaluate_all(load_params())
    for name, rows in result.predictions.items():
        write_json(paths.PLOTS / "confusion" / f"{name}.json", rows)
    write_json(paths.METRICS / "evaluate.json", result.report)
    confusion_grid(result.matrices, result.classes, paths.PLOTS / "confusion.png")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main)
