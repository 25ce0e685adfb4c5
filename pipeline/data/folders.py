"""Real image data on disk: VTAB-1K task folders and ImageFolder trees."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from pipeline import PipelineError
from pipeline.data.arrays import ImageSet

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MIN_PER_CLASS = 3  # an ImageFolder class needs an image for each of train, val and test


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
        if parts[1].startswith("-"):
            raise PipelineError(
                f"{listing}:{n}: negative label {parts[1]}: labels are class indices 0..K-1"
            )
        paths.append(root / parts[0])
        labels.append(int(parts[1]))
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise PipelineError(
            f"{listing}: {len(missing)} listed images are missing, e.g. {missing[0]}"
        )
    return _read(paths, size), np.asarray(labels, np.int64)


def _named(indices: list[int], classes: list[str]) -> str:
    """Class indices with their names where those differ, the first five of them."""
    shown = [str(i) if classes[i] == str(i) else f"{i} ({classes[i]})" for i in indices[:5]]
    more = f" and {len(indices) - 5} more" if len(indices) > 5 else ""
    return ", ".join(shown) + more


def _class_names(root: Path, num_classes: int) -> list[str]:
    """classes.txt beside the lists (line i names label i), else the labels as names."""
    listing = root / "classes.txt"
    if not listing.is_file():
        return [str(i) for i in range(num_classes)]
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if len(names) != num_classes:
        raise PipelineError(
            f"{listing}: {len(names)} class names for the {num_classes} classes of the lists "
            f"(labels 0..{num_classes - 1}): give one name per line, line i naming label i"
        )
    return names


def _check_coverage(
    listing: Path, arrays: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str]
) -> None:
    """Each class 0..K-1 in the training list: twice in train800val200 (one for each part)."""
    need = 2 if "trainval" in arrays else 1
    labels = arrays["trainval" if need == 2 else "train"][1]
    if not len(labels):
        raise PipelineError(f"{listing}: lists no images")
    counts = np.bincount(labels, minlength=len(classes))
    if absent := np.flatnonzero(counts == 0).tolist():
        top = len(classes) - 1
        raise PipelineError(
            f"{listing}: no training image of class {_named(absent, classes)}: labels must be "
            f"0..K-1 with each class in the training list (the largest label, {top}, makes a "
            f"{top + 1}-class head)"
        )
    if few := np.flatnonzero(counts < need).tolist():
        raise PipelineError(
            f"{listing}: only one image of class {_named(few, classes)}: the split needs two "
            "of each class (one for train, one for val): add images of it"
        )


def load_vtab(path: str | Path | None, size: int) -> dict[str, ImageSet]:
    """A VTAB-1K task folder: train800.txt / val200.txt (or train800val200.txt) and test.txt,
    and optionally classes.txt (line i names label i).

    Without the separate train800/val200 lists, the caller splits train800val200 itself: the
    result then has only `trainval` and `test`. Every label 0..K-1 has a training image (and
    two in train800val200, one for each part), so no class of the head goes untrained.
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
    num_classes = int(max(lab.max(initial=-1) for _, lab in arrays.values())) + 1
    classes = _class_names(root, num_classes)
    _check_coverage(root / lists["trainval" if "trainval" in lists else "train"], arrays, classes)
    return {k: ImageSet(im, lab, classes) for k, (im, lab) in arrays.items()}


def load_imagefolder(path: str | Path | None, size: int) -> ImageSet:
    """An ImageFolder tree: root/<class name>/<image>, classes in sorted order, each with at
    least MIN_PER_CLASS images (one for each of train, val and test)."""
    root = _require_dir(path, "ImageFolder root")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise PipelineError(f"{root}: no class sub-folders (expected root/<class>/<image>)")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise PipelineError(
                f"{root / name}: class folder '{name}' holds no images: add some or remove it"
            )
        if len(files) < MIN_PER_CLASS:
            raise PipelineError(
                f"{root / name}: class '{name}' has {len(files)} image(s), fewer than the "
                f"{MIN_PER_CLASS} a split into train, val and test needs: add images or remove it"
            )
        paths += files
        labels += [label] * len(files)
    return ImageSet(_read(paths, size), np.asarray(labels, np.int64), classes)
