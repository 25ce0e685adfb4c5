"""export: every variant (unmerged) and merged model to ONNX, checked against torch."""

from __future__ import annotations

import numpy as np
import torch

from pipeline import PipelineError, paths
from pipeline.artifacts import deployables, load_deployable, load_task
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.data import to_tensor
from pipeline.export import export_onnx
from pipeline.io import write_json
from pipeline.train.loop import predict
from pipeline.variants import all_variants
from serve.backends import OnnxRuntimeBackend, run_batched


def main(argv: list[str]) -> None:
    params = load_params()
    (test,) = load_task("test")
    images = to_tensor(test.images).numpy()
    report = {}
    for name, variant in deployables(all_variants(params)).items():
        model = load_deployable(name, variant)
        path = export_onnx(
            model, paths.ONNX / name / "model.onnx", params.data.image_size, params.export.opset
        )
        ref = predict(model, test).numpy()
        out = run_batched(OnnxRuntimeBackend(path), images)
        diff = float(np.abs(ref - out).max())
        agree = float((ref.argmax(1) == out.argmax(1)).mean() * 100)
        if not diff <= params.export.tolerance:
            raise PipelineError(
                f"{name}: ONNX Runtime logits differ from torch by {diff:.3g} "
                f"(> export.tolerance {params.export.tolerance:g})"
            )
        report[name] = {
            "onnx_path": str(path),
            "max_abs_diff": diff,
            "top1_agreement": agree,
            "opset": params.export.opset,
            "bytes": path.stat().st_size,
        }
        print(f"{name}: {path} max |ort - torch| = {diff:.2e}, top-1 agreement {agree:.1f}%")
    write_json(paths.METRICS / "export.json", report)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main)
