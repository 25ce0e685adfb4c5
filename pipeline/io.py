"""Atomic file writing: a killed stage never leaves a half-written output behind; reading
tensors and model files so that a damaged one is named in a one-line error."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipeline import PipelineError

# mkstemp / mkdtemp create 0600 / 0700 and safetensors writes 0600; outputs get the modes
# open() and mkdir() give (those DVC restores from its cache). umask is read by setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _usual_modes(path: Path) -> None:
    """0666 / 0777 less the umask, for a file or a folder and all below it."""
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        _usual_modes(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` whole once the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        _usual_modes(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict | None = None):
    """safetensors with string metadata; tensors are made contiguous and detached first."""
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata={k: str(v) for k, v in (meta or {}).items()})


@contextlib.contextmanager
def reading(path: str | Path, what: str) -> Iterator[None]:
    """Turn a reader's failure on a damaged file into a one-line PipelineError naming the file.
    Every reader (safetensors, ONNX Runtime, onnx, OpenVINO) raises its own exception types,
    some with many-line messages; the last line is the one that says what is wrong."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(e).__name__
        raise PipelineError(
            f"{path}: not a readable {what} ({reason}); if it was cut short or damaged, "
            "rerun the stage that writes it"
        ) from None


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file."""
    with reading(path, "safetensors file"):
        return load_file(str(path))


def digest(*paths: str | Path) -> str:
    """sha256 of the contents of files and folders (every file below, in sorted order)."""
    h = hashlib.sha256()
    for root in map(Path, paths):
        for f in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if f.is_file():
                h.update(str(f.relative_to(root) if root.is_dir() else f.name).encode())
                with f.open("rb") as fh:
                    for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                        h.update(chunk)
    return h.hexdigest()


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors' values (in key order)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
