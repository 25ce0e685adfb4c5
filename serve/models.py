"""The models a server holds: `--model [NAME=]PATH` resolved to a backend plus what the protocol
reports about it (tensor names and shapes, classes, image normalisation)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import PipelineError
from pipeline.config import TORCH_BACKENDS
from pipeline.data import MEAN, STD
from pipeline.export import files
from serve.backends import Backend, open_backend, torch_backend

BACKENDS = (*TORCH_BACKENDS, "onnxruntime", "tensorrt")
# the platform strings Triton reports, so its clients and dashboards read them as usual
PLATFORMS = {
    **dict.fromkeys(TORCH_BACKENDS, "pytorch_libtorch"),
    "onnxruntime": "onnxruntime_onnx",
    "tensorrt": "tensorrt_plan",
}
DEFAULT_FILE = {"onnxruntime": files.ONNX, "tensorrt": files.PLAN}


@dataclass
class ServedModel:
    name: str
    path: Path
    kind: str  # one of BACKENDS
    backend: Backend
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.backend.input_shape

    @property
    def num_classes(self) -> int:
        return self.backend.num_classes

    def metadata(self) -> dict[str, Any]:
        """The protocol's model metadata; the batch axis is -1 (any size)."""
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": PLATFORMS[self.kind],
            "inputs": [
                {
                    "name": self.backend.input_name,
                    "datatype": "FP32",
                    "shape": [-1, *self.input_shape],
                }
            ],
            "outputs": [
                {
                    "name": self.backend.output_name,
                    "datatype": "FP32",
                    "shape": [-1, self.num_classes],
                }
            ],
        }

    def config(self, max_batch_size: int, max_queue_delay_us: int, batching: bool) -> dict:
        """Triton's model configuration (dims without the batch axis, as Triton gives them)."""
        cfg: dict[str, Any] = {
            "name": self.name,
            "platform": PLATFORMS[self.kind],
            "max_batch_size": max_batch_size,
            "input": [
                {
                    "name": self.backend.input_name,
                    "data_type": "TYPE_FP32",
                    "format": "FORMAT_NCHW",
                    "dims": list(self.input_shape),
                }
            ],
            "output": [
                {
                    "name": self.backend.output_name,
                    "data_type": "TYPE_FP32",
                    "dims": [self.num_classes],
                }
            ],
            "instance_group": [
                {"count": 1, "kind": "KIND_GPU" if self.backend.on_gpu else "KIND_CPU"}
            ],
            "parameters": {"source": {"string_value": str(self.path)}},
        }
        if batching:
            cfg["dynamic_batching"] = {"max_queue_delay_microseconds": max_queue_delay_us}
        return cfg


def split_spec(spec: str) -> tuple[str, Path]:
    """`NAME=PATH` or `PATH`; without a name, the variant's: the parent folder for a file named
    `model.*` (the export layout) or for a folder, else the file's stem."""
    name, sep, rest = spec.partition("=")
    if sep and name and "/" not in name:
        return name, Path(rest)
    path = Path(spec)
    if path.is_dir():
        return path.resolve().name, path
    if path.name.startswith("model."):
        return path.resolve().parent.name, path
    return path.name.split(".")[0], path


def _resolve(path: Path, kind: str) -> Path:
    """The file a backend opens: a folder stands for the export layout's file in it."""
    torch_kind = kind in TORCH_BACKENDS
    if not torch_kind and path.is_dir():
        path = path / DEFAULT_FILE[kind]
    if torch_kind and path.is_file():
        path = path.parent  # model.safetensors / adapter.json etc.: their folder
    if not path.exists():
        raise PipelineError(f"{path}: no such model file or folder")
    return path


def _torch_model(folder: Path) -> tuple[Any, list[str]]:
    from pipeline import models
    from pipeline.artifacts import ADAPTER_META, load_variant
    from pipeline.io import read_json

    if (folder / "model.json").is_file():  # a plain (or merged) ViT
        return models.load_model(folder), read_json(folder / "model.json").get("classes", [])
    if (folder / ADAPTER_META).is_file():  # an unmerged adapter variant
        model, meta = load_variant(folder)
        return model, meta.get("classes", [])
    raise PipelineError(
        f"{folder}: the torch backend takes a model folder (model.json + model.safetensors) "
        f"or a trained variant folder ({ADAPTER_META})"
    )


def load(
    spec: str,
    kind: str,
    threads: int | None = None,
    precision: str = "fp32",
    max_batch_size: int = 64,
) -> ServedModel:
    """Open one `--model` argument on backend `kind`; `precision` is the PyTorch backends'
    (fp32 or bf16), `max_batch_size` the largest batch a CUDA graph is captured for."""
    from pipeline.export.metadata import CLASSES, IMAGE_MEAN, IMAGE_STD, read_preprocessing

    if kind not in BACKENDS:
        raise PipelineError(f"unknown backend {kind!r} (one of {', '.join(BACKENDS)})")
    name, path = split_spec(spec)
    path = _resolve(path, kind)
    if kind in TORCH_BACKENDS:
        model, classes = _torch_model(path)
        backend: Backend = torch_backend(kind, model, precision, max_batch_size)
        meta: dict[str, list] = {}
    elif precision != "fp32":
        raise PipelineError(
            f"precision {precision}: only the PyTorch backends ({', '.join(TORCH_BACKENDS)}) "
            f"take one; {kind} runs the exported float32 graph"
        )
    else:
        backend = open_backend(kind, path, threads)
        # an engine carries no metadata: the ONNX it was built from sits beside it
        source = path if kind == "onnxruntime" else path.parent / files.ONNX
        meta = read_preprocessing(source) if source.is_file() else {}
        classes = meta.get(CLASSES, [])
    if len(classes) != backend.num_classes:
        classes = [str(i) for i in range(backend.num_classes)]
    return ServedModel(
        name=name,
        path=path,
        kind=kind,
        backend=backend,
        classes=classes,
        mean=tuple(meta.get(IMAGE_MEAN, MEAN)),
        std=tuple(meta.get(IMAGE_STD, STD)),
    )


def load_all(specs: list[str], kind: str, **options: Any) -> dict[str, ServedModel]:
    """Every `--model`, by name (`options` as `load` takes them); two models under one name is
    an error that says how to fix it."""
    out: dict[str, ServedModel] = {}
    for spec in specs:
        model = load(spec, kind, **options)
        if model.name in out:
            raise PipelineError(
                f"two models are named {model.name!r} ({out[model.name].path} and {model.path}): "
                "name them with NAME=PATH"
            )
        out[model.name] = model
    return out
