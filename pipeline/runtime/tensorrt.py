"""TensorRT: a serialized engine (the export stage's `model.plan`), CUDA only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline import PipelineError


def unavailable() -> str | None:
    """Why TensorRT cannot run here, or None when the package and a CUDA GPU are present."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt package is not installed (pip install '.[tensorrt]')"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


class TensorRTBackend:
    """A serialized TensorRT engine (the export stage's `model.plan`); CUDA only."""

    name = "tensorrt"
    on_gpu = True

    def __init__(self, path: str | Path) -> None:
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
