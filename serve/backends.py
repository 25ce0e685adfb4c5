"""Inference backends behind one interface: float32 NCHW batch in, float32 logits out."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from pipeline import PipelineError
from pipeline.export.onnx import INPUT_NAME, OUTPUT_NAME


class Backend(Protocol):
    name: str
    input_name: str
    output_name: str
    input_shape: tuple[int, int, int]  # (C, H, W): the batch axis is free
    num_classes: int
    on_gpu: bool

    def run(self, images: np.ndarray) -> np.ndarray: ...


class TorchBackend:
    """Eager PyTorch, on CUDA when present."""

    name = "torch"
    input_name, output_name = INPUT_NAME, OUTPUT_NAME

    def __init__(self, model: torch.nn.Module, device: str | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.on_gpu = self.device.type == "cuda"
        self.model = model.eval().to(self.device)
        embed = model.patch_embed  # a timm ViT; an adapter may wrap its conv
        conv = next(m for m in embed.modules() if isinstance(m, torch.nn.Conv2d))
        self.input_shape = (conv.in_channels, *embed.img_size)
        self.num_classes = model.num_classes

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
    """ONNX Runtime, with its CUDA provider when present; `name` tells which artefact it runs."""

    def __init__(
        self, path: str | Path, threads: int | None = None, name: str = "onnxruntime"
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
        self.session = ort.InferenceSession(str(path), opts, providers=ort_providers())
        self.on_gpu = self.session.get_providers()[0] == "CUDAExecutionProvider"
        (tensor,) = self.session.get_inputs()
        self.input_name, self.output_name = tensor.name, self.session.get_outputs()[0].name
        self.input_shape = tuple(tensor.shape[1:])
        self.num_classes = self.session.get_outputs()[0].shape[-1]

    def run(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]


class TensorRTBackend:
    """A serialized TensorRT engine (the export stage's `model.plan`); CUDA only."""

    name = "tensorrt"
    on_gpu = True

    def __init__(self, path: str | Path) -> None:
        from pipeline.export.tensorrt import unavailable

        if reason := unavailable():
            raise PipelineError(f"{path}: the TensorRT backend cannot run here: {reason}")
        if not Path(path).is_file():
            raise PipelineError(
                f"{path}: TensorRT engine not found (run the export stage on a GPU)"
            )
        import tensorrt as trt

        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise PipelineError(f"{path}: not an engine this TensorRT version can load")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        (self.input_name,) = inputs
        (self.output_name,) = [n for n in names if n not in inputs]
        self.input_shape = tuple(self.engine.get_tensor_shape(self.input_name))[1:]
        # the optimisation profile's largest batch: a server must not batch beyond it
        self.max_batch_size = self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0]
        self.num_classes = self.engine.get_tensor_shape(self.output_name)[-1]
        self.stream = torch.cuda.Stream()

    @torch.inference_mode()
    def run(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).cuda()
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise PipelineError(f"TensorRT: the engine's profile does not take shape {x.shape}")
        out = torch.empty(
            tuple(self.context.get_tensor_shape(self.output_name)),
            dtype=torch.float32,
            device="cuda",
        )
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        with torch.cuda.stream(self.stream):
            self.stream.wait_stream(torch.cuda.current_stream())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise PipelineError("TensorRT failed to run the engine")
        self.stream.synchronize()
        return out.cpu().numpy()


def open_backend(name: str, path: str | Path, threads: int | None = None) -> Backend:
    """The backend for an exported file: `tensorrt` for an engine, else ONNX Runtime under
    `name` (onnxruntime, onnxruntime-optimized, onnxruntime-int8)."""
    if name == "tensorrt":
        return TensorRTBackend(path)
    return OnnxRuntimeBackend(path, threads, name=name)


def run_batched(backend: Backend, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits for a large array, batch by batch."""
    return np.concatenate(
        [backend.run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    )
