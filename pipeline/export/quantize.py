"""Reduced-precision copies of an exported model: FP16 (for GPUs), INT8 dynamic and static."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from pipeline.io import atomic_path
from pipeline.manifest import INPUT_NAME

# What INT8 covers: the projections (inside fused Attention too). The patch-embedding Conv stays
# fp32: ONNX Runtime's ConvInteger is slower on CPU than the fp32 Conv it would replace.
INT8_OPS = ["MatMul", "Attention"]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantiser logs advice at WARNING on the root logger for every model; keep errors."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def to_fp16(src: str | Path, dst: str | Path) -> Path:
    """FP16 weights and compute, fp32 `images` in and `logits` out (callers keep their dtype)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True)
    with atomic_path(dst) as tmp:
        model.save_model_to_file(str(tmp))
    return Path(dst)


def quantize_int8_dynamic(src: str | Path, dst: str | Path, per_channel: bool = False) -> Path:
    """INT8 weights (per tensor, or per output channel), uint8 activations quantised per call
    from their observed range: no calibration. Run on the optimised graph, where fused
    Attention becomes QAttention. u8 x s8 is the pair VNNI's dot product takes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(dst) as tmp, _quiet():
        quantize_dynamic(
            str(src),
            str(tmp),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            op_types_to_quantize=INT8_OPS,
            # the optimiser's contrib operators have no ONNX shape inference to type them
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return Path(dst)


def quantize_int8_static(
    src: str | Path,
    dst: str | Path,
    calibration: np.ndarray,
    batch_size: int = 16,
    qdq: bool = True,
    signed_activations: bool = False,
) -> Path:
    """INT8 with activation ranges calibrated on `calibration` images (N, 3, H, W), per-channel
    weights. QDQ (`qdq`) is the form TensorRT and other INT8 runtimes take; QOperator writes
    QLinearMatMul for ONNX Runtime's own kernels; `signed_activations` makes them s8 (s8 x s8)
    rather than u8. Run on the plain graph."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[dict[str, np.ndarray]] = (
                {INPUT_NAME: np.ascontiguousarray(calibration[i : i + batch_size], np.float32)}
                for i in range(0, len(calibration), batch_size)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with atomic_path(dst) as tmp, _quiet():
        quantize_static(
            str(src),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
            activation_type=QuantType.QInt8 if signed_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
        )
    return Path(dst)
