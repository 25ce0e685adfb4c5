"""ONNX export with a dynamic batch axis, checked by onnx's checker."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
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
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Export `model` (eval mode, fp32, CPU) to `path`: input `images` (batch, 3, H, W), output
    `logits`, the batch axis dynamic; the weights go to external data when they are over
    `external_data_bytes`. `metadata` goes into the file's metadata_props (what a server needs
    to read: classes, normalisation).

    The graph is traced by torch.onnx's TorchScript exporter: on these models it gives what the
    dynamo exporter gives (the same logits, the same fusions in ONNX Runtime's optimiser: see
    tests/test_deploy_artefacts.py) in a twentieth of the time (0.2 s against 4.5 s for the
    default teacher), and the pipeline exports about forty models a run."""
    model = model.eval().float().cpu()
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    example = torch.randn(2, 3, image_size, image_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written in a scratch folder under its final name (external data records the file name),
    # then moved in, data first: an interrupted export leaves no half-written model.onnx.
    with (
        tempfile.TemporaryDirectory(dir=path.parent, prefix=".export.") as scratch,
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # the tracer's notes on Python values it records
        tmp = Path(scratch) / path.name
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
        proto = onnx.load(str(tmp))
        if metadata:
            onnx.helper.set_model_props(proto, metadata)
        external = weights > external_data_bytes
        onnx.save_model(
            proto,
            str(tmp),
            save_as_external_data=external,
            location=f"{path.name}.data" if external else None,
        )
        onnx.checker.check_model(str(tmp))
        for extra in Path(scratch).iterdir():
            if extra != tmp:
                os.replace(extra, path.parent / extra.name)
        os.replace(tmp, path)
    return path
