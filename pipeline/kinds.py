"""The kinds of artefact an exported model's folder can hold (the table readers of a manifest
look artefacts up in), and the tensor names every artefact has. It imports nothing of the
project: the params schema reads it, so every stage depends on it."""

from __future__ import annotations

from dataclasses import dataclass

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class Kind:
    """One kind of artefact: the file name it has in a model's folder, the runtime that runs it,
    its precision, its prefix in reports/export.json, and whether the benchmark times it on the
    runtime's usual device (FP16 graphs and QDQ INT8 are for GPU runtimes: built and checked,
    not timed on a CPU)."""

    file: str
    runtime: str
    precision: str
    key: str
    timed: bool = True


# artefact name (the `backend` of benchmark rows) -> kind; the order export builds them in
KINDS = {
    "onnxruntime": Kind("model.onnx", "onnxruntime", "fp32", "onnx"),
    "onnxruntime-optimized": Kind("model.optimized.onnx", "onnxruntime", "fp32", "optimized"),
    "onnxruntime-fp16": Kind("model.fp16.onnx", "onnxruntime", "fp16", "fp16", timed=False),
    "onnxruntime-int8": Kind("model.int8.onnx", "onnxruntime", "int8", "int8"),
    "onnxruntime-int8-static": Kind(
        "model.int8-static.onnx", "onnxruntime", "int8", "int8_static", timed=False
    ),
    # the IR converted from model.onnx, compiled at the kind's precision (bf16 where the ISA has
    # it); the INT8 IR from NNCF. An IR's weights are in the .bin beside its .xml
    "openvino": Kind("model.xml", "openvino", "fp32", "openvino"),
    "openvino-bf16": Kind("model.xml", "openvino", "bf16", "openvino_bf16"),
    "openvino-int8": Kind("model.int8.xml", "openvino", "int8", "openvino_int8"),
    "tensorrt": Kind("model.plan", "tensorrt", "fp16", "tensorrt"),
}
