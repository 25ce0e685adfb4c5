"""ONNX Runtime: an exported file, with the CUDA provider where CUDA is usable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline import PipelineError
from pipeline.io import reading


def ort_providers() -> list[str]:
    """CUDA first only where CUDA really is usable: asking for it elsewhere just logs noise."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if torch.cuda.is_available() and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntimeBackend:
    """ONNX Runtime, with its CUDA provider when present; `name` tells which artefact it runs.
    With `spin` false the intra-op threads sleep between runs instead of spinning: in a server
    the event loop shares the cores, and a spinning pool takes the CPU that reads the next
    requests (batch 1 under load on two cores: 15-18 % more images/s for a ViT of 6 blocks,
    11-41 % for smaller ones served beside it)."""

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        name: str = "onnxruntime",
        spin: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.name = name
        if not Path(path).is_file():
            raise PipelineError(f"{path}: ONNX model not found (run the export stage first)")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        with reading(path, "ONNX model"):
            self.session = ort.InferenceSession(str(path), opts, providers=ort_providers())
        self.on_gpu = self.session.get_providers()[0] == "CUDAExecutionProvider"
        (tensor,) = self.session.get_inputs()
        self.input_name, self.output_name = tensor.name, self.session.get_outputs()[0].name
        self.input_shape = tuple(tensor.shape[1:])
        self.num_classes = self.session.get_outputs()[0].shape[-1]

    def run(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]
