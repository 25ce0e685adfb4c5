"""The manifest of an exported model: `models/onnx/<model>/manifest.json`, written by the export
stage once every artefact in the folder is checked.

It is the one description of a deployable model that readers use (the server, the benchmark,
the Triton repository, evaluate): which file runs on which runtime at which precision, how each
compared with torch, the tensor names and shapes, the largest batch, the classes and the image
normalisation, and the folder of the PyTorch model it was exported from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import PipelineError
from pipeline.io import read_json, write_json
from pipeline.kinds import INPUT_NAME, KINDS, OUTPUT_NAME

__all__ = ["INPUT_NAME", "KINDS", "MANIFEST", "OUTPUT_NAME", "Manifest", "read_manifest"]

MANIFEST = "manifest.json"


def companions(file: Path) -> list[Path]:
    """The files an artefact is made of: an IR's .bin, an ONNX graph's external data."""
    extra = {".xml": [file.with_suffix(".bin")], ".onnx": [file.with_name(file.name + ".data")]}
    return [file, *(f for f in extra.get(file.suffix, []) if f.is_file())]


@dataclass
class Manifest:
    name: str  # the deployable model: <variant> or <variant>-merged
    variant: str  # the trained variant it comes from
    shipped: bool  # what one deploys of the variant (the merged form where there is one)
    torch: str  # the PyTorch model's folder, relative to the manifest's folder
    input_shape: list[int]  # (C, H, W)
    num_classes: int
    max_batch_size: int
    classes: list[str]
    mean: list[float]
    std: list[float]
    # artefact name -> {"file", "runtime", "precision", and its parity with torch}
    artefacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    recommended: str | None = None  # the artefact to deploy on the machine that exported it
    folder: Path = Path(".")

    def add(self, name: str, parity: dict[str, float]) -> None:
        kind = KINDS[name]
        file = self.folder / kind.file
        if not file.is_file():
            raise PipelineError(f"{file}: the {name} artefact is missing")
        entry = {"file": kind.file, "runtime": kind.runtime, "precision": kind.precision}
        size = sum(f.stat().st_size for f in companions(file))
        self.artefacts[name] = {**entry, "bytes": size, **parity}

    def path(self, artefact: str) -> Path:
        """The file of an artefact the manifest lists."""
        if artefact not in self.artefacts:
            raise PipelineError(
                f"{self.folder / MANIFEST}: no {artefact} artefact "
                f"(it has {', '.join(self.artefacts) or 'none'})"
            )
        return self.folder / self.artefacts[artefact]["file"]

    def timed(self) -> dict[str, Path]:
        """artefact name -> file, for the artefacts the benchmark times."""
        return {a: self.path(a) for a in self.artefacts if KINDS[a].timed}

    @property
    def torch_folder(self) -> Path:
        return (self.folder / self.torch).resolve()

    def tensors(self) -> dict[str, dict[str, Any]]:
        """The protocol's description of the input and output tensors (batch axis -1)."""
        return {
            "input": {"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *self.input_shape]},
            "output": {"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, self.num_classes]},
        }

    def write(self) -> Path:
        data = {k: v for k, v in vars(self).items() if k != "folder"}
        write_json(self.folder / MANIFEST, {**data, **self.tensors()})
        return self.folder / MANIFEST


def has_manifest(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def read_manifest(folder: str | Path) -> Manifest:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise PipelineError(f"{path}: no manifest (run the export stage first)")
    try:
        data = read_json(path)
        fields = {k: data[k] for k in Manifest.__dataclass_fields__ if k != "folder"}
    except (ValueError, KeyError, TypeError) as e:
        raise PipelineError(f"{path}: not a valid manifest ({e!r}); rerun the export stage") from e
    return Manifest(**fields, folder=folder)
