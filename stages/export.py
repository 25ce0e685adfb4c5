"""export: every model to ONNX, checked against torch; what ships also optimised, in FP16 and
INT8, as a TensorRT engine where a GPU is present, and in a Triton model repository; a manifest
per model (see pipeline.export.deploy)."""

from __future__ import annotations

import torch

from pipeline import summary
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.export.deploy import export_all


def main(argv: list[str]) -> None:
    summary.save("export", export_all(load_params()))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main)
