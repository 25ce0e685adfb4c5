"""Triton's model configuration, built once: rendered to `config.pbtxt` for a Triton model
repository (`tritonserver --model-repository models/triton`) and returned as JSON by the
server's `/v2/models/{m}/config` route.

A repository model is `<repo>/<name>/config.pbtxt` + `<repo>/<name>/1/model.<ext>` (an IR's
.bin beside its .xml); an engine or an IR goes in a model of its own (`<name>-tensorrt`,
`<name>-openvino`), since a Triton model has exactly one platform or backend. `<name>-python`
runs the optimised ONNX graph on ONNX Runtime in Triton's Python backend (serve/triton_model.py
as its model.py), for a Triton without an onnxruntime backend.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from pipeline.io import atomic_dir
from pipeline.manifest import INPUT_NAME, OUTPUT_NAME, Manifest, companions
from pipeline.runtime.base import platform

_ENUM = re.compile(r"(TYPE|KIND|FORMAT)_[A-Z0-9_]+")  # written bare in protobuf text
BACKENDS = ("openvino", "python")  # named by `backend`: they have no platform
PYTHON_MODEL = Path(__file__).resolve().parents[2] / "serve" / "triton_model.py"


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    return sorted({b for b in (1, 8, 32, max_batch_size) if b <= max_batch_size})


def model_config(
    name: str,
    platform: str,
    input_shape: list[int] | tuple[int, ...],
    num_classes: int,
    max_batch_size: int,
    max_queue_delay_us: int,
    kind: str = "KIND_AUTO",
    batching: bool = True,
    parameters: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Triton's model configuration in its JSON form; dims leave out the batch axis, which
    max_batch_size > 0 makes implicit. `platform` is a backend's name for those in BACKENDS."""
    config: dict[str, Any] = {
        "name": name,
        "backend" if platform in BACKENDS else "platform": platform,
        "max_batch_size": max_batch_size,
        "input": [
            {
                "name": INPUT_NAME,
                "data_type": "TYPE_FP32",
                "format": "FORMAT_NCHW",
                "dims": list(input_shape),
            }
        ],
        "output": [{"name": OUTPUT_NAME, "data_type": "TYPE_FP32", "dims": [num_classes]}],
        "instance_group": [{"count": 1, "kind": kind}],
    }
    if batching:
        config["dynamic_batching"] = {
            "preferred_batch_size": preferred_batch_sizes(max_batch_size),
            "max_queue_delay_microseconds": max_queue_delay_us,
        }
    if parameters:
        config["parameters"] = {k: {"string_value": v} for k, v in parameters.items()}
    return config


def to_pbtxt(config: dict[str, Any]) -> str:
    """The protobuf text form of a JSON model configuration (what config.pbtxt holds)."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, str) and not _ENUM.fullmatch(v):
            return json.dumps(v)
        return str(v)

    def emit(key: str, value: Any, depth: int) -> None:
        pad = "  " * depth
        if key == "parameters":  # a protobuf map: one entry message per key
            for k, v in value.items():
                lines.append(f"{pad}{key} {{")
                emit("key", k, depth + 1)
                emit("value", v, depth + 1)
                lines.append(f"{pad}}}")
        elif isinstance(value, dict):
            lines.append(f"{pad}{key} {{")
            for k, v in value.items():
                emit(k, v, depth + 1)
            lines.append(f"{pad}}}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:  # a repeated message
                emit(key, item, depth)
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(map(scalar, value))} ]")
        else:
            lines.append(f"{pad}{key}: {scalar(value)}")

    for key, value in config.items():
        emit(key, value, 0)
    return "\n".join(lines) + "\n"


def add_model(repo: str | Path, manifest: Manifest, artefact: str, max_queue_delay_us: int) -> Path:
    """Copy an artefact of an exported model (with its external data or weights) into `repo` as
    version 1 of a model with its config: named as the manifest's model for an ONNX graph,
    `<model>-<runtime>` for another runtime. Replaces an older copy whole."""
    source = manifest.path(artefact)
    runtime, precision = (manifest.artefacts[artefact][k] for k in ("runtime", "precision"))
    name = manifest.name if runtime == "onnxruntime" else f"{manifest.name}-{runtime}"
    parameters = None
    if runtime == "openvino":  # the OpenVINO backend's settings, as the export compiled it
        from pipeline.runtime.openvino import compile_config

        bf16 = compile_config(precision, None)["INFERENCE_PRECISION_HINT"] == "bf16"
        parameters = {"PERFORMANCE_HINT": "LATENCY", **({"HINT_BF16": "YES"} if bf16 else {})}
    config = model_config(
        name,
        platform(runtime),
        manifest.input_shape,
        manifest.num_classes,
        manifest.max_batch_size,
        max_queue_delay_us,
        kind="KIND_GPU" if runtime == "tensorrt" else "KIND_AUTO",
        parameters=parameters,
    )
    folder = Path(repo) / name
    with atomic_dir(folder) as tmp:
        version = tmp / "1"
        version.mkdir()
        model, *extra = companions(source)
        shutil.copy2(model, version / f"model{source.suffix}")
        for file in extra:  # external data keeps its recorded name; an IR's .bin follows its .xml
            target = f"model{file.suffix}" if file.suffix == ".bin" else file.name
            shutil.copy2(file, version / target)
        (tmp / "config.pbtxt").write_text(to_pbtxt(config))
    return folder


def add_python_model(
    repo: str | Path, manifest: Manifest, artefact: str, max_queue_delay_us: int, threads: int
) -> Path:
    """`<model>-python`: an ONNX artefact (with its external data) under Triton's Python backend,
    the same tensors, largest batch and dynamic batching as the ONNX model, one CPU instance
    running ONNX Runtime with `threads` intra-op threads. Replaces an older copy whole."""
    source = manifest.path(artefact)
    name = f"{manifest.name}-python"
    config = model_config(
        name,
        "python",
        manifest.input_shape,
        manifest.num_classes,
        manifest.max_batch_size,
        max_queue_delay_us,
        kind="KIND_CPU",
        parameters={"onnx_file": source.name, "intra_op_threads": str(threads)},
    )
    folder = Path(repo) / name
    with atomic_dir(folder) as tmp:
        version = tmp / "1"
        version.mkdir()
        for file in companions(source):  # external data keeps the name the graph records
            shutil.copy2(file, version / file.name)
        shutil.copy2(PYTHON_MODEL, version / "model.py")
        (tmp / "config.pbtxt").write_text(to_pbtxt(config))
    return folder
