"""Presets (configs/*.yaml): valid params with the official settings, `dvc exp run -S` arguments
that rebuild exactly those params, one-line errors, and one preset run as a DVC experiment."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from dvc.utils.hydra import apply_overrides
from test_pipeline_e2e import _project, _run

from pipeline import models, preset
from pipeline.config import ConfigError, parse_params

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs").glob("*.yaml"))
VIT_B = "vit_base_patch16_224.augreg_in21k"
ARC_RECIPE = {
    "train.lr": 0.01,
    "train.weight_decay": 0.0,
    "train.batch_size": 32,
    "train.epochs": 100,
    "train.warmup_epochs": 10,
    "train.min_lr_ratio": 0.0,
    "train.grad_clip": 1.0,
    "train.method_lr": {},
    "train.shift": 0,  # no augmentation
}
VTAB = {"data.source": "vtab", "data.image_size": 224, "data.train_size": 800}
# the settings each preset must carry (METHODS.md's official ones)
OFFICIAL = {
    "vtab-arc": {
        **VTAB,
        **ARC_RECIPE,
        "backbone": {
            "student": {"arch": VIT_B, "kwargs": {"weight_init": "jax"}, "weights": "timm"}
        },
        "train.variants": ["student-arc", "student-arc_att"],
        "adapters.arc": {"rank": 50, "dropout": 0.1},
        "adapters.arc_att": {"rank": 50, "dropout": 0.1},
        "distill.variants": [],
    },
    "vtab-consolidator": {
        **VTAB,
        **ARC_RECIPE,
        "train.batch_size": 64,
        "train.min_lr_ratio": 1e-3,
        "backbone.student.arch": VIT_B,
        "backbone.student.kwargs": {"drop_path_rate": 0.1},  # timm's init: a trunc-normal head
        "train.grad_clip": 0.0,  # the official script does not clip
        "train.variants": ["student-consolidator"],
        "adapters.consolidator": {"groups": [384], "shuffle": False, "drop_path": 0.0},
    },
    "vtab-lora": {
        **VTAB,
        **ARC_RECIPE,
        "backbone.student.arch": VIT_B,
        "train.variants": ["student-lora"],
        "adapters.lora.rank": 8,
    },
    "vtab-ssf": {**VTAB, **ARC_RECIPE, "backbone.student.arch": VIT_B},
    "idat": {
        **VTAB,
        "train.epochs": 100,
        "train.warmup_epochs": 10,
        "train.batch_size": 64,
        "train.grad_clip": 0.0,
        "train.shift": 0,
        "backbone.teacher": {"arch": VIT_B, "weights": "timm"},  # the larger: iDAT's student
        "backbone.student": {"arch": "vit_small_patch16_224.augreg_in21k", "weights": "timm"},
        "distill.variants": ["student-adapter-idat", "student-arc-idat"],
        "train.variants": ["teacher-adapter", "teacher-arc"],
        "adapters.adapter.width": 4,
        "distill.idat.kd": "mse",
    },
    **{
        f"wecolora-r{r}": {
            "data.source": "imagefolder",
            "data.image_size": 224,
            "backbone.teacher.arch": "vit_base_patch16_224.orig_in21k_ft_in1k",
            "distill.variants": ["student-lora_qkv-wecolora"],
            "adapters.lora_qkv.rank": 128,
            "distill.wecolora.ratio": r,
            "distill.wecolora.few_shot": 0.01,
            "distill.wecolora.loss": "l1",
            "distill.wecolora.recipe": {
                "epochs": 10,
                "warmup_epochs": 2,
                "batch_size": 1024,
                "lr": 1e-3 * 1024 / 256,
                "betas": [0.9, 0.95],
                "weight_decay": 0.05,
                "min_lr_ratio": 0.0,
                "grad_clip": 0.0,
                "shift": 0,
            },
        }
        for r in (2, 3)
    },
    "cdl": {
        "data.source": "imagefolder",
        "data.image_size": 224,
        "backbone.teacher.arch": VIT_B,
        "backbone.student.arch": "vit_small_patch16_224.augreg_in21k",
        "continual.tasks": 10,
        "continual.learners": ["l2p", "dualprompt", "coda"],
        "continual.recipe.epochs": 35,
        "continual.recipe.lr": 1e-3,
        "continual.recipe.batch_size": 64,
        "continual.recipe.shift": 0,
        "continual.alpha": 0.5,
        "continual.temperature": 2.0,
        "continual.coda.components": 100,
    },
}


def _at(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree[key]
    return tree


def test_every_preset_is_covered():
    assert {p.stem for p in PRESETS} == set(OFFICIAL)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_validates_with_the_official_settings(path, tmp_path):
    target, params = preset.resolve(path, data=str(tmp_path), params_file=ROOT / "params.yaml")
    preset.check_data(params)
    assert params.data.path == str(tmp_path.resolve())
    for dotted, value in OFFICIAL[path.stem].items():
        assert _at(target, dotted) == value, dotted
    assert params.benchmark.serve.variants  # served models exist: checked by resolve


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_overrides_rebuild_the_same_params(path, tmp_path):
    checkpoint = tmp_path / "weights dir" / "model.safetensors"
    checkpoint.parent.mkdir()
    checkpoint.touch()
    role = next(iter(yaml.safe_load(path.read_text())["backbone"]))
    target, params = preset.resolve(
        path,
        data=str(tmp_path / "it's a folder"),
        weights=[f"{role}={checkpoint}"],
        sets=["seed=3", "export.opset=19"],
        params_file=ROOT / "params.yaml",
    )
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    file = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", file)
    apply_overrides(file, preset.overrides(base, target))  # what `dvc exp run -S` does
    back = yaml.safe_load(file.read_text())
    assert back == target
    assert parse_params(back) == params
    assert params.backbone[role].weights == str(checkpoint.resolve())


def test_weight_init_jax_zeroes_the_head_and_timms_own_is_trunc_normal():
    """ARC's presets take `weight_init: jax` for a zero head; Consolidator's and iDAT's leave
    timm's init, the official truncated normal (std 0.02) head with a zero bias."""
    kwargs = {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
    model = models.create("vit_tiny_patch16_224", {**kwargs, "weight_init": "jax"}, 5)
    assert torch.count_nonzero(model.head.weight) == 0
    torch.manual_seed(0)
    model = models.create("vit_small_patch16_224", {"img_size": 16, "patch_size": 8}, 1000)
    assert model.head.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(model.head.bias) == 0


def test_dry_run_prints_the_dvc_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    data = tmp_path / "dtd"
    data.mkdir()
    preset.main(["configs/vtab-arc.yaml", "--data", str(data), "--dry-run"])
    words = shlex.split(capsys.readouterr().out)
    assert words[:5] == ["dvc", "exp", "run", "-n", "vtab-arc-dtd"]
    assert words[5::2] == ["-S"] * len(words[6::2])
    assert "~backbone.teacher" in words and f"data.path={data.resolve()}" in words
    preset.main(
        [
            "configs/idat.yaml",
            "--data",
            str(data),
            "--name",
            "x",
            "--target",
            "prepare",
            "--dry-run",
        ]
    )
    words = shlex.split(capsys.readouterr().out)
    assert words[3:5] == ["-n", "x"] and words[-1] == "prepare"


@pytest.mark.parametrize(
    ("text", "argv", "message"),
    [
        ("train: {lrr: 1}", [], "train.lrr: unknown key (known: variants, epochs"),
        ("train: {lr: -1}", [], "train.lr must be > 0, got -1"),
        ("backbone: {student: {weights: timm}}", [], "backbone.student.arch: required key"),
        ("train: [1", [], "not valid YAML"),
        ("- a list", [], "a preset is a mapping of params.yaml keys"),
        (
            "benchmark: {serve: {variants: [student-linear]}}",
            [],
            "benchmark.serve.variants: 'student-linear' is not a variant with a merged form",
        ),
        ("data: {source: vtab}", ["--data", "/no/such/folder"], "VTAB-1K task folder '/no/such"),
        ("data: {source: imagefolder}", [], "--data: give the ImageNet-style folder"),
        ("seed: 1", ["--weights", "pupil=/x.pt"], "--weights: role 'pupil' has no backbone"),
        ("seed: 1", ["--weights", "student=/no/x.pt"], "checkpoint file '/no/x.pt' not found"),
        ("seed: 1", ["--set", "train.epochs"], "--set: expected KEY=VALUE"),
    ],
)
def test_bad_preset_is_one_clear_error(tmp_path, monkeypatch, text, argv, message):
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "\n")
    with pytest.raises(ConfigError) as error:
        preset.main([str(bad), *argv, "--dry-run"])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_preset_is_one_line_on_the_command_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: -1}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.preset", str(bad), "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: train.lr must be > 0, got -1"]


TINY = [  # configs/vtab-arc.yaml at a size that trains in seconds
    "data.image_size=16",
    "data.train_size=12",
    "data.val_size=6",  # the tiny task's 18 training images: 12 + 6
    "continual.tasks=3",  # prepare checks the settings that depend on the 3 classes
    "export.calibration_images=12",
    "backbone.student={arch: vit_tiny_patch16_224, weights: none,"
    " kwargs: {patch_size: 8, embed_dim: 16, depth: 1, num_heads: 2}}",
    "train.epochs=1",
    "train.warmup_epochs=0",
    "train.batch_size=8",
]


def test_preset_runs_as_a_dvc_experiment(tmp_path, vtab_task):
    project = _project(tmp_path / "project")
    shutil.copytree(ROOT / "configs", project / "configs")
    task = vtab_task(tmp_path / "vtab-1k" / "dtd")
    committed = tmp_path / "committed-params.yaml"
    shutil.copy(project / "params.yaml", committed)
    sets = [a for s in TINY for a in ("--set", s)]
    proc = _run(
        project,
        sys.executable,
        "-m",
        "pipeline.preset",
        "configs/vtab-arc.yaml",
        *("--data", str(task), "--name", "tiny-arc", "--target", "train@student-arc", *sets),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Running stage 'train@student-arc'" in proc.stdout
    assert "backbone@teacher" not in proc.stdout  # the preset's backbone has no teacher role

    expected, _ = preset.resolve(
        ROOT / "configs/vtab-arc.yaml", data=str(task), sets=TINY, params_file=committed
    )
    assert yaml.safe_load((project / "params.yaml").read_text()) == expected  # the run's params
    shown = subprocess.run(
        ["git", "show", "HEAD:params.yaml"], cwd=project, capture_output=True, text=True
    )
    assert shown.stdout == committed.read_text()  # git's params.yaml is untouched
    listed = _run(project, "dvc", "exp", "list", "--name-only")
    assert "tiny-arc" in listed.stdout.split()

    summary = json.loads((project / "reports/prepare.json").read_text())
    assert summary["downstream"]["source"] == "vtab"
    assert {k: summary["downstream"][k] for k in ("train", "val", "test")} == {
        "train": 12,
        "val": 6,
        "test": 6,
    }
    meta = json.loads((project / "models/adapters/student-arc/adapter.json").read_text())
    assert meta["method"] == "arc" and meta["num_classes"] == 3 and len(meta["history"]) == 1
