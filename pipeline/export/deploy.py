"""The export stage's work: every deployable model to ONNX, checked against torch on the test set;
what ships also optimised, in FP16 and INT8, as a TensorRT engine where a GPU is present, and in
the Triton model repository; a manifest per model once its folder is complete."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pipeline import paths
from pipeline.artifacts import deployables, load_deployable, load_task, shipped
from pipeline.config import ExportConfig, Params
from pipeline.data import MEAN, STD, ImageSet, to_tensor
from pipeline.export import tensorrt, triton
from pipeline.export.fusable import fusable
from pipeline.export.metadata import preprocessing
from pipeline.export.onnx import export_onnx
from pipeline.export.optimize import attention_shape, optimize_vit
from pipeline.export.quantize import quantize_int8_dynamic, quantize_int8_static, to_fp16
from pipeline.manifest import KINDS, Manifest
from pipeline.runtime import run_batched
from pipeline.runtime.open import open_backend
from pipeline.runtime.parity import parity, require_equal, top1
from pipeline.train.loop import predict
from pipeline.variants import Variant, all_variants


def export_all(params: Params) -> dict:
    """Export every deployable model of the run; the report metrics/export.json holds."""
    cfg = params.export
    train, test = load_task("train", "test")
    calibration = to_tensor(train.images[: cfg.calibration_images]).numpy()
    trt_skipped = tensorrt.unavailable()
    models = {}
    for name, variant in deployables(all_variants(params)).items():
        models[name] = export_model(name, variant, test, calibration, cfg, trt_skipped)
        print(_summary(name, models[name]))
    return {"tensorrt": f"skipped: {trt_skipped}" if trt_skipped else "built", "models": models}


def export_model(
    name: str,
    variant: Variant,
    test: ImageSet,
    calibration: np.ndarray,
    cfg: ExportConfig,
    trt_skipped: str | None,
) -> dict:
    """One model's folder under models/onnx (and its Triton models, if it ships); its row."""
    model = load_deployable(name, variant)
    ref = predict(model, test).numpy()
    images = to_tensor(test.images).numpy()
    folder = paths.ONNX / name
    # the same function in the layout ONNX Runtime's optimiser fuses (plain ViTs only)
    graph, rewritten = fusable(model)
    path = export_onnx(
        graph,
        folder / KINDS["onnxruntime"].file,
        images.shape[-1],
        cfg.opset,
        metadata=preprocessing(test.classes),
    )
    torch_folder = paths.MERGED / name if name == variant.merged_name else variant.folder
    manifest = Manifest(
        name=name,
        variant=variant.name,
        shipped=shipped(name, variant),
        torch=os.path.relpath(torch_folder, folder),
        input_shape=list(images.shape[1:]),
        num_classes=ref.shape[1],
        max_batch_size=cfg.max_batch_size,
        classes=list(test.classes),
        mean=list(MEAN),
        std=list(STD),
        folder=folder,
    )

    def check(artefact: str) -> dict[str, float]:
        """Run an artefact on the test set, compare it with torch, list it in the manifest."""
        backend = open_backend(artefact, folder / KINDS[artefact].file)
        stats = parity(ref, run_batched(backend, images), test.labels)
        manifest.add(artefact, stats)
        return stats

    stats = check("onnxruntime")
    require_equal(name, "ONNX Runtime", stats, cfg.tolerance, "export.tolerance")
    row = {
        "onnx_path": str(path),
        **stats,
        "torch_top1": top1(ref, test.labels),
        "opset": cfg.opset,
        "bytes": path.stat().st_size,
        "attention_rewritten": rewritten,
    }
    if manifest.shipped:
        row.update(_ship(manifest, model, calibration, cfg, trt_skipped, check))
    manifest.write()
    return row


def _ship(
    manifest: Manifest,
    model: torch.nn.Module,
    calibration: np.ndarray,
    cfg: ExportConfig,
    trt_skipped: str | None,
    check: Callable[[str], dict[str, float]],
) -> dict:
    """The deployment artefacts beside model.onnx, each checked against torch by `check`; the
    optimised graph (and the engine) go into the Triton repository."""
    folder, onnx = manifest.folder, manifest.path("onnxruntime")

    def file(artefact: str) -> Path:
        return folder / KINDS[artefact].file

    fused = optimize_vit(
        onnx, file("onnxruntime-optimized"), *attention_shape(model), cfg.skip_layer_norm
    )
    to_fp16(file("onnxruntime-optimized"), file("onnxruntime-fp16"))
    quantize_int8_dynamic(file("onnxruntime-optimized"), file("onnxruntime-int8"))
    quantize_int8_static(onnx, file("onnxruntime-int8-static"), calibration)
    built = [
        "onnxruntime-optimized",
        "onnxruntime-fp16",
        "onnxruntime-int8",
        "onnxruntime-int8-static",
    ]
    if trt_skipped is None:
        tensorrt.build_engine(
            onnx,
            file("tensorrt"),
            manifest.input_shape[-1],
            cfg.max_batch_size,
            file("onnxruntime-fp16"),
        )
        built.append("tensorrt")
    out: dict = {"fused_ops": fused}
    for artefact in built:
        stats = check(artefact)
        key = KINDS[artefact].key
        out[f"{key}_path"] = str(manifest.path(artefact))
        out.update({f"{key}_{k}": v for k, v in stats.items()})
        if artefact == "onnxruntime-optimized":
            require_equal(
                manifest.name, "the optimised ONNX", stats, cfg.tolerance, "export.tolerance"
            )
    triton.add_model(paths.TRITON, manifest, "onnxruntime-optimized", cfg.max_queue_delay_us)
    if "tensorrt" in manifest.artefacts:
        triton.add_model(paths.TRITON, manifest, "tensorrt", cfg.max_queue_delay_us)
    return out


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
