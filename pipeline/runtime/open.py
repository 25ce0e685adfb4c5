"""Open a backend by kind: a model folder on a PyTorch backend, an exported file on its runtime."""

from __future__ import annotations

from pathlib import Path

from pipeline import PipelineError
from pipeline.manifest import KINDS
from pipeline.runtime.base import Backend


def open_backend(
    name: str, path: str | Path, threads: int | None = None, spin: bool = True
) -> Backend:
    """The backend for an exported file; `name` is an artefact of `manifest.KINDS` (the label
    its benchmark rows carry) or a runtime (onnxruntime, openvino, tensorrt). `spin` false:
    ONNX Runtime's threads sleep between runs (for a server, `OnnxRuntimeBackend`)."""
    runtime = KINDS[name].runtime if name in KINDS else name
    if runtime == "tensorrt":
        from pipeline.runtime.tensorrt import TensorRTBackend

        return TensorRTBackend(path)
    if runtime == "onnxruntime":
        from pipeline.runtime.ort import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, threads, name=name, spin=spin)
    if runtime == "openvino":
        from pipeline.runtime.openvino import OpenVinoBackend

        precision = KINDS[name].precision if name in KINDS else "fp32"
        return OpenVinoBackend(path, threads, precision, name=name)
    raise PipelineError(f"unknown artefact or runtime {name!r} (one of {', '.join(KINDS)})")
