"""OpenVINO artefacts of an exported model: the IR converted from the fp32 ONNX (batch axis
dynamic, weights kept fp32: the precision is chosen when it is compiled), and an INT8 IR from
NNCF's post-training quantization calibrated on training images (transformer preset, with
SmoothQuant; optionally NNCF's accuracy-control flow, which keeps the layers that cost accuracy
in floating point until the top-1 drop on the validation images is within a bound)."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline import PipelineError


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF logs each algorithm's start at INFO; keep its progress bars and its warnings."""
    logger = logging.getLogger("nncf")
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)


def save_ir(model: object, xml: str | Path) -> Path:
    """Write an IR's .xml and .bin so that a reader never sees one without the other."""
    import openvino as ov

    xml = Path(xml)
    xml.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=xml.parent, prefix=".ir-") as tmp:
        ov.save_model(model, str(Path(tmp) / xml.name), compress_to_fp16=False)
        os.replace(Path(tmp) / xml.with_suffix(".bin").name, xml.with_suffix(".bin"))
        os.replace(Path(tmp) / xml.name, xml)
    return xml


def to_openvino(onnx: str | Path, xml: str | Path) -> Path:
    """The IR of an ONNX graph, fp32 weights, the batch axis left dynamic. Read by the ONNX
    frontend as it is: the CPU plugin applies its own transformations when it compiles, and
    convert_model's offline ones cost 30x the time for the same compiled model."""
    import openvino as ov

    return save_ir(ov.Core().read_model(str(onnx)), xml)


def _accuracy(compiled: object, items: object) -> float:
    """Top-1 of a compiled model on (images, labels) batches: NNCF's validation function."""
    hits = total = 0
    for images, labels in items:
        logits = compiled(images)[0]
        hits += int((logits.argmax(1) == labels).sum())
        total += len(labels)
    return hits / total


def quantize_openvino(
    xml: str | Path,
    dst: str | Path,
    calibration: np.ndarray,
    smooth_quant_alpha: float = 0.95,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    max_drop: float = 0.005,
    max_iterations: int = 10,
    batch_size: int = 16,
) -> Path:
    """An INT8 IR of `xml` by NNCF, activations calibrated on `calibration` (N, C, H, W).

    `smooth_quant_alpha` is SmoothQuant's migration strength on MatMuls (-1: off). With
    `validation` (images, labels), NNCF's accuracy-control flow reverts the most harmful
    quantizers to floating point, at most `max_iterations` rounds, until the top-1 drop is at
    most `max_drop` (a fraction: 0.005 is half a point). Both datasets go in batches of
    `batch_size`."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (
        AdvancedAccuracyRestorerParameters,
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    model = ov.Core().read_model(str(xml))
    # batches, not single images: half the time, and no worse on the default models
    batches = [calibration[i : i + batch_size] for i in range(0, len(calibration), batch_size)]
    common = {  # the transformer type: its mixed preset, attention MatMuls and SmoothQuant
        "model_type": nncf.ModelType.TRANSFORMER,
        "subset_size": len(batches),  # NNCF counts a dataset's items: every image is used
    }
    calib = nncf.Dataset(batches)
    advanced = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=smooth_quant_alpha)
    )
    with _quiet():
        try:
            if validation is None:
                quantized = nncf.quantize(model, calib, advanced_parameters=advanced, **common)
            else:
                images, labels = validation
                val = nncf.Dataset(
                    [
                        (images[i : i + batch_size], labels[i : i + batch_size])
                        for i in range(0, len(images), batch_size)
                    ]
                )
                quantized = nncf.quantize_with_accuracy_control(
                    model,
                    calib,
                    val,
                    _accuracy,
                    max_drop=max_drop,
                    drop_type=nncf.DropType.ABSOLUTE,
                    advanced_quantization_parameters=advanced,
                    advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                        max_num_iterations=max_iterations
                    ),
                    **common,
                )
        except (RuntimeError, ValueError) as e:
            raise PipelineError(f"{xml}: NNCF could not quantize it ({e})") from e
    return save_ir(quantized, dst)
