"""A Triton Inference Server model repository: `tritonserver --model-repository <repo>`.

Each model is `<repo>/<name>/config.pbtxt` + `<repo>/<name>/1/model.onnx` (platform
onnxruntime_onnx); an engine goes in its own model, `<name>-tensorrt/1/model.plan`, since a
Triton model has exactly one platform.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.export.onnx import INPUT_NAME, OUTPUT_NAME
from pipeline.io import atomic_dir

PLATFORMS = {".onnx": "onnxruntime_onnx", ".plan": "tensorrt_plan"}


def model_config(
    name: str,
    platform: str,
    image_size: int,
    num_classes: int,
    max_batch_size: int,
    max_queue_delay_us: int,
) -> str:
    """config.pbtxt text: batch axis implicit (max_batch_size > 0), dynamic batching on."""
    preferred = sorted({b for b in (1, 8, 32, max_batch_size) if b <= max_batch_size})
    return f"""name: "{name}"
platform: "{platform}"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ 3, {image_size}, {image_size} ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {num_classes} ]
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(map(str, preferred))} ]
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
instance_group [
  {{
    count: 1
    kind: {"KIND_GPU" if platform == "tensorrt_plan" else "KIND_AUTO"}
  }}
]
"""


def add_model(
    repo: str | Path,
    name: str,
    model_file: str | Path,
    image_size: int,
    num_classes: int,
    max_batch_size: int,
    max_queue_delay_us: int,
) -> Path:
    """Copy `model_file` (.onnx, with its external data, or .plan) into `repo` as model `name`
    version 1, with its config; replaces an older copy whole."""
    model_file = Path(model_file)
    platform = PLATFORMS[model_file.suffix]
    folder = Path(repo) / name
    with atomic_dir(folder) as tmp:
        version = tmp / "1"
        version.mkdir()
        shutil.copy2(model_file, version / f"model{model_file.suffix}")
        data = model_file.with_name(model_file.name + ".data")
        if data.is_file():  # external data keeps its recorded file name
            shutil.copy2(data, version / data.name)
        (tmp / "config.pbtxt").write_text(
            model_config(
                name, platform, image_size, num_classes, max_batch_size, max_queue_delay_us
            )
        )
    return folder
