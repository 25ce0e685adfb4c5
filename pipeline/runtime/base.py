"""The backend contract and the tables of backend kinds and precisions (torch-free)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from pipeline.kinds import KINDS

TORCH_BACKENDS = ("torch", "torch-compile", "cuda-graph")  # run a model folder, not a file
# run an exported file: an artefact of the manifest by name; a runtime's name (onnxruntime,
# openvino, tensorrt) is also the name of its fp32 (or only) artefact
FILE_BACKENDS = tuple(KINDS)
BACKENDS = (*TORCH_BACKENDS, *FILE_BACKENDS)
PRECISIONS = ("fp32", "bf16")  # the PyTorch backends' compute type; files carry their own
# the platform strings Triton reports per runtime, so its clients and dashboards read them as
# usual (OpenVINO is a Triton backend with no platform of its own: its name stands for it)
PLATFORMS = {
    **dict.fromkeys(TORCH_BACKENDS, "pytorch_libtorch"),
    "onnxruntime": "onnxruntime_onnx",
    "openvino": "openvino",
    "tensorrt": "tensorrt_plan",
}


def platform(backend: str) -> str:
    """Triton's platform string of a backend or artefact name."""
    return PLATFORMS[KINDS[backend].runtime if backend in KINDS else backend]


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
