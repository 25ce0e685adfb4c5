"""What a server needs to turn an image into a model's input, kept in the ONNX file itself
(metadata_props), so one file is enough to serve a model."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.data import MEAN, STD
from pipeline.io import reading

CLASSES, IMAGE_MEAN, IMAGE_STD = "classes", "image_mean", "image_std"


def preprocessing(classes: list[str]) -> dict[str, str]:
    """metadata_props for a model trained on this project's normalisation."""
    return {CLASSES: json.dumps(classes), IMAGE_MEAN: json.dumps(MEAN), IMAGE_STD: json.dumps(STD)}


def read_preprocessing(path: str | Path) -> dict[str, list]:
    """classes / image_mean / image_std from an ONNX file's metadata_props (those it has)."""
    import onnx

    with reading(path, "ONNX model"):
        proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    return {k: json.loads(props[k]) for k in (CLASSES, IMAGE_MEAN, IMAGE_STD) if k in props}
