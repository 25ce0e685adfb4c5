"""Shared fixtures: tiny real timm ViTs and tiny real image data (small sizes, no fakes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline import models, paths
from pipeline.config import parse_params
from pipeline.data import ImageSet
from pipeline.data.glyphs import generate

ROOT = Path(__file__).resolve().parents[1]
TINY = {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def tiny_vit():
    def make(num_classes: int = 4, **overrides):
        return models.create("vit_tiny_patch16_224", {**TINY, **overrides}, num_classes)

    return make


@pytest.fixture
def trained_like(tiny_vit):
    """A tiny 5-class ViT whose every weight is perturbed, like a trained one (no shared
    constants)."""
    model = tiny_vit(num_classes=5, depth=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="session")
def glyph_data() -> ImageSet:
    """4 classes x 24 real glyph images at 16x16."""
    return generate(num_classes=4, samples_per_class=24, image_size=16, seed=0)


def images(n: int = 8, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size)


@pytest.fixture
def vtab_task():
    """Write a tiny VTAB-1K task folder: glyph PNGs listed `relative/path.png label` in
    train800val200.txt (`train` per class) and test.txt (`test` per class)."""

    def make(folder: Path, classes: int = 3, train: int = 6, test: int = 2, seed: int = 0) -> Path:
        data = generate(classes, train + test, 16, seed)
        (folder / "images").mkdir(parents=True)
        lists: dict[str, list[str]] = {"train800val200.txt": [], "test.txt": []}
        seen = dict.fromkeys(range(classes), 0)
        for i, (image, label) in enumerate(zip(data.images, data.labels.tolist())):
            Image.fromarray(image).save(folder / "images" / f"{i}.png")
            name = "test.txt" if seen[label] < test else "train800val200.txt"
            lists[name].append(f"images/{i}.png {label}")
            seen[label] += 1
        for name, lines in lists.items():
            (folder / name).write_text("\n".join(lines) + "\n")
        return folder

    return make


@pytest.fixture
def tiny_project(tmp_path, monkeypatch):
    """A working folder with two saved tiny backbones and params to match."""
    monkeypatch.chdir(tmp_path)
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["data"]["image_size"] = 16
    data["backbone"] = {
        "teacher": {
            "arch": "vit_tiny_patch16_224",
            "kwargs": {**TINY, "embed_dim": 48, "num_heads": 3, "depth": 4},
        },
        "student": {"arch": "vit_tiny_patch16_224", "kwargs": TINY},
    }
    data["train"].update(epochs=2, batch_size=32, variants=["teacher-lora", "student-lora"])
    data["benchmark"]["serve"]["variants"] = ["student-lora"]  # of the variants trained here
    data["distill"]["wecolora"]["recipe"] = {"epochs": 2, "batch_size": 32}
    params = parse_params(data)
    for role in ("teacher", "student"):
        kwargs = params.backbone_kwargs(role)
        models.save_model(
            paths.BACKBONES / role,
            models.create("vit_tiny_patch16_224", kwargs, 0),
            "vit_tiny_patch16_224",
            kwargs,
            0,
        )
    return params
