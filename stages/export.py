"""export: every model to ONNX, checked against torch; what ships also optimised, in FP16 and
INT8, as a TensorRT engine where a GPU is present, and in a Triton model repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline import PipelineError, paths
from pipeline.artifacts import deployables, load_deployable, load_task, shipped
from pipeline.cli import run_stage
from pipeline.config import ExportConfig, load_params
from pipeline.data import to_tensor
from pipeline.export import export_onnx, files, tensorrt, triton
from pipeline.export.fusable import fusable
from pipeline.export.metadata import preprocessing
from pipeline.export.optimize import attention_shape, optimize_vit
from pipeline.export.quantize import quantize_int8_dynamic, quantize_int8_static, to_fp16
from pipeline.io import write_json
from pipeline.train.loop import predict
from pipeline.variants import all_variants
from serve.backends import OnnxRuntimeBackend, TensorRTBackend, run_batched


def compare(ref: np.ndarray, out: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """How an artefact's logits `out` compare with torch's `ref` on the test set."""
    return {
        "max_abs_diff": float(np.abs(ref - out).max()),
        "top1_agreement": float((ref.argmax(1) == out.argmax(1)).mean() * 100),
        "top1": float((out.argmax(1) == labels).mean() * 100),
    }


def check_fp32(name: str, what: str, stats: dict[str, float], tolerance: float) -> None:
    if not (stats["max_abs_diff"] <= tolerance and stats["top1_agreement"] == 100.0):
        raise PipelineError(
            f"{name}: {what} differs from torch by {stats['max_abs_diff']:.3g} "
            f"(export.tolerance {tolerance:g}), top-1 agreement {stats['top1_agreement']:.2f}%"
        )


def ship(
    name: str,
    model: torch.nn.Module,
    folder: Path,
    ref: np.ndarray,
    test_images: np.ndarray,
    labels: np.ndarray,
    calibration: np.ndarray,
    cfg: ExportConfig,
    image_size: int,
    trt_skipped: str | None,
) -> dict:
    """The deployment artefacts of one model beside its model.onnx, each checked."""
    fused = optimize_vit(
        folder / files.ONNX, folder / files.OPTIMIZED, *attention_shape(model), cfg.skip_layer_norm
    )
    out = {"fused_ops": fused}

    def measure(key: str, path: Path, backend=OnnxRuntimeBackend) -> dict[str, float]:
        stats = compare(ref, run_batched(backend(path), test_images), labels)
        out[f"{key}_path"] = str(path)
        out.update({f"{key}_{k}": v for k, v in stats.items()})
        return stats

    check_fp32(
        name, "the optimised ONNX", measure("optimized", folder / files.OPTIMIZED), cfg.tolerance
    )
    measure("fp16", to_fp16(folder / files.OPTIMIZED, folder / files.FP16))
    measure("int8", quantize_int8_dynamic(folder / files.OPTIMIZED, folder / files.INT8))
    measure(
        "int8_static",
        quantize_int8_static(folder / files.ONNX, folder / files.INT8_STATIC, calibration),
    )
    num_classes = ref.shape[1]
    repo_args = (image_size, num_classes, cfg.max_batch_size, cfg.max_queue_delay_us)
    triton.add_model(paths.TRITON, name, folder / files.OPTIMIZED, *repo_args)
    if trt_skipped is None:
        plan = tensorrt.build_engine(
            folder / files.ONNX,
            folder / files.PLAN,
            image_size,
            cfg.max_batch_size,
            fp16_onnx_path=folder / files.FP16,
        )
        measure("tensorrt", plan, TensorRTBackend)
        triton.add_model(paths.TRITON, f"{name}-tensorrt", plan, *repo_args)
    return out


def main(argv: list[str]) -> None:
    params = load_params()
    cfg = params.export
    train, test = load_task("train", "test")
    test_images = to_tensor(test.images).numpy()
    calibration = to_tensor(train.images[: cfg.calibration_images]).numpy()
    trt_skipped = tensorrt.unavailable()
    report: dict = {"tensorrt": f"skipped: {trt_skipped}" if trt_skipped else "built"}
    models = report["models"] = {}
    for name, variant in deployables(all_variants(params)).items():
        model = load_deployable(name, variant)
        ref = predict(model, test).numpy()
        # the same function in the layout ONNX Runtime's optimiser fuses (plain ViTs only)
        export_model, rewritten = fusable(model)
        folder = paths.ONNX / name
        path = export_onnx(
            export_model,
            folder / files.ONNX,
            params.data.image_size,
            cfg.opset,
            metadata=preprocessing(test.classes),
        )
        stats = compare(ref, run_batched(OnnxRuntimeBackend(path), test_images), test.labels)
        check_fp32(name, "ONNX Runtime", stats, cfg.tolerance)
        row = models[name] = {
            "onnx_path": str(path),
            **stats,
            "torch_top1": float((ref.argmax(1) == test.labels).mean() * 100),
            "opset": cfg.opset,
            "bytes": path.stat().st_size,
            "attention_rewritten": rewritten,
        }
        if shipped(name, variant):
            row.update(
                ship(
                    name,
                    model,
                    folder,
                    ref,
                    test_images,
                    test.labels,
                    calibration,
                    cfg,
                    params.data.image_size,
                    trt_skipped,
                )
            )
        print(_summary(name, row))
    write_json(paths.METRICS / "export.json", report)


def _summary(name: str, row: dict) -> str:
    text = f"{name}: max |ort - torch| = {row['max_abs_diff']:.2e}, top-1 {row['top1']:.2f}%"
    if "int8_top1" in row:
        fused = ", ".join(f"{k} {v}" for k, v in row["fused_ops"].items() if v)
        text += (
            f"; fused {fused}; optimised {row['optimized_max_abs_diff']:.2e}; top-1 fp16 "
            f"{row['fp16_top1']:.2f}%, int8 {row['int8_top1']:.2f}%, "
            f"int8 static {row['int8_static_top1']:.2f}%"
        )
    return text


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main)
