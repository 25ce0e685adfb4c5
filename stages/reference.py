"""reference: deployment speed of a real-size merged ViT on every backend and artefact (see
pipeline.reference)."""

from __future__ import annotations

import torch

from pipeline import paths, summary
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.plots import throughput_bars
from pipeline.reference import highlights, reference_report


def main(argv: list[str]) -> None:
    report = reference_report(load_params())
    summary.save("reference", report)
    throughput_bars(report["rows"], paths.PLOTS / "reference.png", highlights(report))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main)
