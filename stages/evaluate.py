"""evaluate: top-1 of every model on the test set, in torch and in ONNX Runtime; the confusion
matrices; and the training curves of every run, one chart per metric."""

from __future__ import annotations

import torch

from pipeline import paths, summary
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.evaluation import evaluate_all
from pipeline.plots import confusion_grid, training_curves


def _runs(stage: str) -> dict:
    folder = paths.LIVE / stage
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir()} if folder.is_dir() else {}


def main(argv: list[str]) -> None:
    result = evaluate_all(load_params())
    summary.save("evaluate", result.report)
    confusion_grid(result.matrices, result.classes, paths.PLOTS / "confusion.png")
    training_curves(_runs("train") | _runs("distill"), paths.PLOTS / "training", "adaptation")
    training_curves(_runs("backbone"), paths.PLOTS / "pretraining", "backbone pre-training")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main)
