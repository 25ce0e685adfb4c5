"""continual: class-incremental prompt learning with a teacher and a student (CDL).

The downstream data is cut into tasks by `continual.class_order`. For each prompt learner the
teacher, the student alone, the student with KD and the student with CDL-Prompt go through the
same task sequence (accuracy matrix, average accuracy, forgetting). The deployable students are
exported to ONNX whole, checked against torch on the test set, and timed against a plain ViT of
the student's size (see pipeline.continual.deploy).
"""

from __future__ import annotations

from pipeline import paths, summary
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.continual.deploy import continual_report
from pipeline.plots import continual_curves


def main(argv: list[str]) -> None:
    report = continual_report(load_params())
    summary.save("continual", report)
    continual_curves(report["accuracy"], paths.PLOTS / "continual.png")


if __name__ == "__main__":
    run_stage(main)
