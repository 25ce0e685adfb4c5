"""ONNX export with a dynamic batch axis, checked by onnx's checker."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import onnx
import torch

from pipeline.io import atomic_path

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    image_size: int,
    opset: int = 18,
    max_batch: int = 4096,
) -> Path:
    """Export `model` (eval mode, fp32, CPU) to `path`: input `images` (batch, 3, H, W)."""
    model = model.eval().float().cpu()
    example = torch.randn(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    path = Path(path)
    with atomic_path(path) as tmp, contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"x": {0: batch}},
            verbose=False,
        )
        # One self-contained file up to protobuf's 2 GB limit; larger models need external data.
        program.save(str(tmp), external_data=False)
        onnx.checker.check_model(str(tmp))
    return path
