"""Artefacts on disk as later stages and the server read them: a trained variant bound to the
backbone it was trained on, and damaged files named in one line rather than a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline import PipelineError, adapters, models, paths
from pipeline.artifacts import load_variant, save_variant
from pipeline.data import MEAN, STD
from pipeline.export import export_onnx
from pipeline.export.metadata import preprocessing, read_preprocessing
from pipeline.export.openvino import to_openvino
from pipeline.manifest import KINDS, Manifest
from pipeline.runtime.open import open_backend
from tests.conftest import TINY, images

ROOT = Path(__file__).parents[1]
ARCH = "vit_tiny_patch16_224"
CLASSES = ["a", "b", "c", "d"]
BACKBONE = paths.BACKBONES / "student"
VARIANT = paths.ADAPTERS / "student-lora"


def _save_backbone(folder: Path) -> None:
    models.save_model(folder, models.create(ARCH, TINY, 0), ARCH, TINY, 0)


def _train_like(project: Path, monkeypatch) -> torch.nn.Module:
    """A project folder with a backbone and a variant trained on it, saved as the train stage
    saves them (paths relative to the project); the variant."""
    project.mkdir(exist_ok=True)
    monkeypatch.chdir(project)
    _save_backbone(BACKBONE)
    model = adapters.inject(models.load_model(BACKBONE, num_classes=len(CLASSES)), "lora")
    with torch.no_grad():  # trained-like: the adapters and the head change the logits
        for p in adapters.trainable_state(model).values():
            p.add_(torch.randn_like(p) * 0.1)
    save_variant(
        VARIANT, model, name="student-lora", backbone=BACKBONE, classes=CLASSES, history=[]
    )
    return model.eval()


def test_a_variant_loads_its_own_backbone_from_any_folder(tmp_path, monkeypatch):
    project, x = tmp_path / "project", images()
    with torch.no_grad():
        expected = _train_like(project, monkeypatch)(x)
    shutil.copytree(project, tmp_path / "copy")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    _save_backbone(BACKBONE)  # another backbone at the same relative path
    for folder in (project / VARIANT, tmp_path / "copy" / VARIANT):
        model, _ = load_variant(folder)
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_a_variant_refuses_a_changed_backbone(tmp_path, monkeypatch):
    _train_like(tmp_path, monkeypatch)
    _save_backbone(BACKBONE)  # new random weights: not what the adapters were trained on
    with pytest.raises(PipelineError) as e:
        load_variant(VARIANT)
    message = str(e.value)
    assert "\n" not in message and "do not match" in message
    assert str(VARIANT / paths.ADAPTER_META) in message
    assert str(BACKBONE / paths.MODEL_FILE) in message


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_truncated_adapter_or_model_file_is_named(tmp_path, monkeypatch):
    _train_like(tmp_path, monkeypatch)
    merged = paths.MERGED / "student-lora-merged"
    model, _ = load_variant(VARIANT)
    models.save_model(merged, adapters.merge(model), ARCH, TINY, len(CLASSES))
    for damaged, load in (
        (VARIANT / paths.ADAPTER_FILE, lambda: load_variant(VARIANT)),
        (merged / paths.MODEL_FILE, lambda: models.load_model(merged)),
        (BACKBONE / paths.MODEL_FILE, lambda: load_variant(VARIANT)),
    ):
        _truncate(damaged)
        with pytest.raises(PipelineError, match="not a readable safetensors file") as e:
            load()
        assert str(e.value).startswith(f"{damaged}: ") and "\n" not in str(e.value)


@pytest.fixture
def exported(tmp_path, trained_like) -> Path:
    """An exported folder as the server reads it: model.onnx (+ the IR, where OpenVINO is)
    and its manifest."""
    onnx = export_onnx(trained_like, tmp_path / "m" / KINDS["onnxruntime"].file, 16)
    manifest = Manifest(
        name="m",
        variant="m",
        shipped=True,
        torch="torch",
        input_shape=[3, 16, 16],
        num_classes=5,
        max_batch_size=8,
        classes=list("abcde"),
        mean=list(MEAN),
        std=list(STD),
        folder=onnx.parent,
    )
    manifest.add("onnxruntime", {})
    manifest.write()
    return onnx.parent


@pytest.mark.parametrize("kind", ["onnxruntime", "openvino"])
def test_a_truncated_exported_model_is_named(tmp_path, trained_like, kind):
    onnx = export_onnx(
        trained_like, tmp_path / KINDS["onnxruntime"].file, 16, metadata=preprocessing(CLASSES)
    )
    files = [onnx]
    if kind == "openvino":
        xml = to_openvino(onnx, tmp_path / KINDS["openvino"].file)
        files = [xml, xml.with_suffix(".bin")]
    for damaged in files:
        whole = damaged.read_bytes()
        _truncate(damaged)
        with pytest.raises(PipelineError, match="not a readable") as e:
            open_backend(kind, files[0], threads=1)
        assert str(e.value).startswith(f"{files[0]}: ") and "\n" not in str(e.value)
        damaged.write_bytes(whole)
    if kind == "onnxruntime":
        _truncate(onnx)
        with pytest.raises(PipelineError, match="not a readable ONNX model") as e:
            read_preprocessing(onnx)
        assert str(e.value).startswith(f"{onnx}: ")


def test_the_server_refuses_a_truncated_model_in_one_line(exported):
    _truncate(exported / KINDS["onnxruntime"].file)
    run = subprocess.run(
        [sys.executable, "-m", "serve", "--model", str(exported), "--backend", "onnxruntime"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert run.stderr.startswith(f"error: {exported / KINDS['onnxruntime'].file}: not a readable")
