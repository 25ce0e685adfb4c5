"""ONNX export with a dynamic batch axis, checked by onnx's checker."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import onnx
import torch

from pipeline.manifest import INPUT_NAME, OUTPUT_NAME

# protobuf caps a file at 2 GiB (graph included): above this the weights go to `<file>.data`
EXTERNAL_DATA_BYTES = 1 << 30


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    image_size: int,
    opset: int = 18,
    max_batch: int = 4096,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Export `model` (eval mode, fp32, CPU) to `path`: input `images` (batch, 3, H, W), output
    `logits`; the weights go to external data when they are over `external_data_bytes`.
    `metadata` goes into the file's metadata_props (what a server needs to read: classes,
    normalisation)."""
    model = model.eval().float().cpu()
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    example = torch.randn(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written in a scratch folder under its final name (external data records the file name),
    # then moved in, data first: an interrupted export leaves no half-written model.onnx.
    with (
        tempfile.TemporaryDirectory(dir=path.parent, prefix=".export.") as scratch,
        contextlib.redirect_stdout(io.StringIO()),
    ):
        tmp = Path(scratch) / path.name
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),  # by position: any forward argument name
            verbose=False,
        )
        program.save(str(tmp), external_data=weights > external_data_bytes)
        if metadata:
            proto = onnx.load(str(tmp), load_external_data=False)
            onnx.helper.set_model_props(proto, metadata)
            onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
        for extra in Path(scratch).iterdir():
            if extra != tmp:
                os.replace(extra, path.parent / extra.name)
        os.replace(tmp, path)
    return path
