"""train_benchmark: what adapter training costs against full fine-tuning of the same backbone,
per method (see pipeline.training_benchmark)."""

from __future__ import annotations

from pipeline import paths, summary
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.plots import training_costs
from pipeline.training_benchmark import training_report


def main(argv: list[str]) -> None:
    report = training_report(load_params())
    summary.save("train_benchmark", report)
    training_costs(report["rows"], paths.PLOTS / "train_benchmark.png")


if __name__ == "__main__":
    run_stage(main)
