"""OpenVINO on the CPU: an IR (model.xml + model.bin) or an ONNX file, compiled at a precision.

`precision` says what the compiled model computes in: `fp32` (exact), `bf16` (oneDNN's bf16
kernels, on AMX or AVX512-BF16), `int8` (an NNCF-quantized IR: its FakeQuantize ops run as INT8,
the rest in bf16 where the CPU has it, else fp32), or `default`, OpenVINO's own choice for the
CPU (bf16 where AMX is, which is what a user gets who compiles the ONNX with no settings).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from pipeline import PipelineError
from pipeline.io import reading
from pipeline.runtime.hardware import this_cpu

OV_PRECISIONS = ("fp32", "bf16", "int8", "default")


def unavailable() -> str | None:
    """Why OpenVINO cannot run here, or None."""
    try:
        import openvino  # noqa: F401
    except ImportError as e:
        return f"openvino is not installed ({e}); pip install openvino"
    return None


def bf16_unavailable() -> str | None:
    """Why bf16 cannot run natively on this CPU, or None."""
    cpu = this_cpu()
    if cpu.bf16 is None:
        return f"{cpu.model} has neither AMX-BF16 nor AVX512-BF16"
    return None


def compile_config(precision: str, threads: int | None) -> dict[str, str]:
    """The CPU plugin's settings for a precision: one stream with every thread on it (the
    latency hint: a request is one batch); `default` sets only the thread count."""
    if precision not in OV_PRECISIONS:
        raise PipelineError(f"OpenVINO precision must be one of {OV_PRECISIONS}, got {precision!r}")
    config = {"INFERENCE_NUM_THREADS": str(threads)} if threads else {}
    if precision == "default":
        return config
    if precision == "bf16" and (reason := bf16_unavailable()):
        raise PipelineError(f"OpenVINO bf16: {reason}; use fp32 or int8")
    bf16 = precision == "bf16" or (precision == "int8" and bf16_unavailable() is None)
    return {
        **config,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
    }


class OpenVinoBackend:
    """A compiled OpenVINO model on the CPU; one infer request per calling thread (a request
    holds its own buffers; the compiled model is shared)."""

    on_gpu = False

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        precision: str = "fp32",
        name: str = "openvino",
    ) -> None:
        if reason := unavailable():
            raise PipelineError(reason)
        import openvino as ov

        if not Path(path).is_file():
            raise PipelineError(f"{path}: OpenVINO model not found (run the export stage first)")
        self.name, self.precision, self.path, self.threads = name, precision, Path(path), threads
        config = compile_config(precision, threads)
        with reading(path, "OpenVINO model"):
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        # what the plugin really computes in (the `default` precision's choice)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.inference_precision = hint.get_type_name()  # f32, bf16
        (inp,), (out,) = self.compiled.inputs, self.compiled.outputs
        self.input_name = inp.get_any_name()
        self.output_name = out.get_any_name()
        self.input_shape = tuple(d.get_length() for d in inp.get_partial_shape()[1:])
        self.num_classes = out.get_partial_shape()[-1].get_length()
        self._local = threading.local()

    def run(self, images: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        x = np.ascontiguousarray(images, dtype=np.float32)
        # a copy: the request reuses its output buffer on the next call
        return request.infer({0: x})[0].copy()
