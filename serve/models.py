"""The models a server holds: `--model [NAME=]PATH` opened on a backend, plus what the protocol
reports about it (tensor names and shapes, classes, image normalisation).

PATH is an exported model's folder (its manifest says which file each backend runs and where
the PyTorch model is), an exported file (an ONNX graph carries its classes and normalisation in
its metadata), or, for the PyTorch backends, a model folder (`model.json`) or a trained variant
folder (`adapter.json`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import PipelineError
from pipeline.data import MEAN, STD
from pipeline.export.triton import model_config
from pipeline.manifest import has_manifest, read_manifest
from pipeline.runtime import BACKENDS, TORCH_BACKENDS, Backend
from pipeline.runtime.base import platform
from pipeline.runtime.open import open_backend
from pipeline.runtime.pytorch import torch_backend


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
            "platform": platform(self.kind),
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
        """Triton's model configuration of this model as served (the repository's builder)."""
        return model_config(
            self.name,
            platform(self.kind),
            self.input_shape,
            self.num_classes,
            max_batch_size,
            max_queue_delay_us,
            kind="KIND_GPU" if self.backend.on_gpu else "KIND_CPU",
            batching=batching,
            parameters={"source": str(self.path)},
        )


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


def load(
    spec: str,
    kind: str,
    threads: int | None = None,
    precision: str = "fp32",
    max_batch_size: int = 64,
) -> ServedModel:
    """Open one `--model` argument on backend `kind`; `precision` is the PyTorch backends'
    (fp32 or bf16), `max_batch_size` the largest batch a CUDA graph is captured for."""
    from pipeline.artifacts import load_torch_folder
    from pipeline.export.metadata import CLASSES, IMAGE_MEAN, IMAGE_STD, read_preprocessing

    if kind not in BACKENDS:
        raise PipelineError(f"unknown backend {kind!r} (one of {', '.join(BACKENDS)})")
    if kind not in TORCH_BACKENDS and precision != "fp32":
        raise PipelineError(
            f"precision {precision}: only the PyTorch backends ({', '.join(TORCH_BACKENDS)}) "
            f"take one; {kind} runs the exported float32 graph"
        )
    name, path = split_spec(spec)
    if not path.exists():
        raise PipelineError(f"{path}: no such model file or folder")
    info: dict[str, Any] = {}
    if has_manifest(path):
        manifest = read_manifest(path)
        info = {CLASSES: manifest.classes, IMAGE_MEAN: manifest.mean, IMAGE_STD: manifest.std}
        path = manifest.torch_folder if kind in TORCH_BACKENDS else manifest.path(kind)
    if kind in TORCH_BACKENDS:
        model, classes = load_torch_folder(path.parent if path.is_file() else path)
        info.setdefault(CLASSES, classes)
        backend: Backend = torch_backend(kind, model, precision, max_batch_size)
    else:
        if path.is_dir():
            raise PipelineError(
                f"{path}: a folder without a manifest; give the exported file, or the folder "
                "the export stage wrote (models/onnx/<model>)"
            )
        backend = open_backend(kind, path, threads, spin=False)  # the event loop needs a core
        if not info and path.suffix == ".onnx":
            info = read_preprocessing(path)
    classes = info.get(CLASSES, [])
    if len(classes) != backend.num_classes:
        classes = [str(i) for i in range(backend.num_classes)]
    return ServedModel(
        name=name,
        path=path,
        kind=kind,
        backend=backend,
        classes=classes,
        mean=tuple(info.get(IMAGE_MEAN, MEAN)),
        std=tuple(info.get(IMAGE_STD, STD)),
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
