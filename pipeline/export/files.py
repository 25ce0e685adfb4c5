"""The files the export stage writes in each model's folder, and the backend that runs each."""

from __future__ import annotations

from pathlib import Path

ONNX = "model.onnx"  # fp32, the reference every other file is checked against
OPTIMIZED = "model.optimized.onnx"  # ONNX Runtime's fused transformer graph, fp32
FP16 = "model.fp16.onnx"  # for GPUs; fp32 in and out
INT8 = "model.int8.onnx"  # dynamic quantisation of the optimised graph: the CPU artefact
INT8_STATIC = "model.int8-static.onnx"  # calibrated QDQ, for runtimes that take QDQ
PLAN = "model.plan"  # TensorRT engine, where a GPU built one

BACKEND_FILES = {
    "onnxruntime": ONNX,
    "onnxruntime-optimized": OPTIMIZED,
    "onnxruntime-int8": INT8,
    "tensorrt": PLAN,
}


def artefacts(folder: str | Path) -> dict[str, Path]:
    """backend name -> file, for the files present in a model's export folder."""
    folder = Path(folder)
    return {b: folder / f for b, f in BACKEND_FILES.items() if (folder / f).is_file()}
