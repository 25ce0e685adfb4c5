"""Inference backends behind one interface: float32 NCHW batch in, float32 logits out."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from pipeline import PipelineError


class Backend(Protocol):
    name: str

    def run(self, images: np.ndarray) -> np.ndarray: ...


class TorchBackend:
    """Eager PyTorch, on CUDA when present."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.eval().to(self.device)

    @torch.inference_mode()
    def run(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        return self.model(x).float().cpu().numpy()


def ort_providers() -> list[str]:
    """CUDA first only where CUDA really is usable: asking for it elsewhere just logs noise."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if torch.cuda.is_available() and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        if not Path(path).is_file():
            raise PipelineError(f"{path}: ONNX model not found (run the export stage first)")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=ort_providers())
        self.input_name = self.session.get_inputs()[0].name

    def run(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]


def run_batched(backend: Backend, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits for a large array, batch by batch."""
    return np.concatenate(
        [backend.run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    )
