"""The backend contract and the tables of backend kinds and precisions (torch-free)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

TORCH_BACKENDS = ("torch", "torch-compile", "cuda-graph")  # run a model folder, not a file
FILE_BACKENDS = ("onnxruntime", "tensorrt")  # run an exported file
BACKENDS = (*TORCH_BACKENDS, *FILE_BACKENDS)
PRECISIONS = ("fp32", "bf16")  # the PyTorch backends' compute type; files carry their own
# the platform strings Triton reports, so its clients and dashboards read them as usual
PLATFORMS = {
    **dict.fromkeys(TORCH_BACKENDS, "pytorch_libtorch"),
    "onnxruntime": "onnxruntime_onnx",
    "tensorrt": "tensorrt_plan",
}


class Backend(Protocol):
    name: str
    input_name: str
    output_name: str
    input_shape: tuple[int, int, int]  # (C, H, W): the batch axis is free
    num_classes: int
    on_gpu: bool

    def run(self, images: np.ndarray) -> np.ndarray: ...


def run_batched(backend: Backend, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits for a large array, batch by batch."""
    return np.concatenate(
        [backend.run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    )
