"""Real image data on disk: VTAB-1K task folders and ImageFolder trees."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from pipeline import PipelineError
from pipeline.data.arrays import ImageSet

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than the caller allows."""


def read_image(
    source: str | Path | BinaryIO, size: int | tuple[int, int], max_pixels: int | None = None
) -> np.ndarray:
    """One image file (path or open binary file) as uint8 RGB (H, W, 3) at `size` (square, or
    (H, W)); raises OSError or ValueError for what is not a readable image, ImageTooLarge
    (checked from the header, before any decoding) for one over `max_pixels`."""
    height, width = (size, size) if isinstance(size, int) else size
    with Image.open(source) as im:  # reads the header only
        if max_pixels is not None and im.width * im.height > max_pixels:
            raise ImageTooLarge(
                f"an image of {im.width}x{im.height} = {im.width * im.height:,} pixels is over "
                f"the limit of {max_pixels:,} pixels"
            )
        return np.asarray(im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC))


def _read(paths: list[Path], size: int) -> np.ndarray:
    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(paths):
        try:
            out[i] = read_image(p, size)
        except (OSError, ValueError) as e:
            raise PipelineError(f"{p}: cannot read image ({e})") from e
    return out


def _require_dir(path: str | Path | None, what: str) -> Path:
    if not path:
        raise PipelineError(f"data.path must name the {what} when data.source needs it")
    path = Path(path)
    if not path.is_dir():
        raise PipelineError(f"data.path: {what} '{path}' does not exist or is not a folder")
    return path


def read_list(root: Path, list_name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A VTAB-1K list file: lines `relative/path.jpg label`, paths relative to the task folder."""
    listing = root / list_name
    paths, labels = [], []
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise PipelineError(f"{listing}:{n}: expected 'relative/path.jpg label', got {line!r}")
        paths.append(root / parts[0])
        labels.append(int(parts[1]))
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise PipelineError(
            f"{listing}: {len(missing)} listed images are missing, e.g. {missing[0]}"
        )
    return _read(paths, size), np.asarray(labels, np.int64)


def load_vtab(path: str | Path | None, size: int) -> dict[str, ImageSet]:
    """A VTAB-1K task folder: train800.txt / val200.txt (or train800val200.txt) and test.txt.

    Without the separate train800/val200 lists, the caller splits train800val200 itself: the
    result then has only `trainval` and `test`.
    """
    root = _require_dir(path, "VTAB-1K task folder")
    names = {p.name for p in root.iterdir()}
    if "test.txt" not in names:
        raise PipelineError(
            f"{root}: no test.txt (a VTAB-1K task folder has test.txt and train800val200.txt)"
        )
    if {"train800.txt", "val200.txt"} <= names:
        lists = {"train": "train800.txt", "val": "val200.txt", "test": "test.txt"}
    elif "train800val200.txt" in names:
        lists = {"trainval": "train800val200.txt", "test": "test.txt"}
    else:
        raise PipelineError(f"{root}: no train800val200.txt (nor train800.txt + val200.txt)")
    arrays = {k: read_list(root, v, size) for k, v in lists.items()}
    num_classes = int(max(lab.max() for _, lab in arrays.values())) + 1
    classes = [str(i) for i in range(num_classes)]
    return {k: ImageSet(im, lab, classes) for k, (im, lab) in arrays.items()}


def load_imagefolder(path: str | Path | None, size: int) -> ImageSet:
    """An ImageFolder tree: root/<class name>/<image>, classes in sorted order."""
    root = _require_dir(path, "ImageFolder root")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise PipelineError(f"{root}: no class sub-folders (expected root/<class>/<image>)")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise PipelineError(f"{root}: the class folders hold no images")
    return ImageSet(_read(paths, size), np.asarray(labels, np.int64), classes)
