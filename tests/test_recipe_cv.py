"""Recipes compared by cross-validation: real training of a tiny ViT on every fold."""

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import recipe_cv
from pipeline import PipelineError, paths
from pipeline.config import ConfigError
from pipeline.data import save_split
from pipeline.data.glyphs import generate


def test_recipes_read_as_yaml_and_a_malformed_one_is_named():
    assert recipe_cv.parse_recipe("epochs=40,shift=1,lr=0.001") == {
        "epochs": 40,
        "shift": 1,
        "lr": 0.001,
    }
    with pytest.raises(PipelineError, match="--recipe: expected KEY=VALUE, got 'epochs'"):
        recipe_cv.parse_recipe("epochs")


def test_each_fold_is_held_out_once_and_the_scores_follow_the_recipe(tiny_project):
    pool = generate(num_classes=4, samples_per_class=12, image_size=16, seed=0)
    trained = recipe_cv.cross_validate(tiny_project, "student-lora", {"epochs": 8}, pool, 3)
    untrained = recipe_cv.cross_validate(tiny_project, "student-lora", {"lr": 1e-9}, pool, 3)
    assert len(trained) == 3 and all(0 <= s <= 100 for s in trained)
    # 4 classes: chance is 25 %; a rate of 1e-9 leaves the zero head at chance on every fold
    assert np.mean(trained) > np.mean(untrained) + 15
    again = recipe_cv.cross_validate(tiny_project, "student-lora", {"epochs": 8}, pool, 3)
    assert again == trained, "seeded folds and training: the same scores"


def test_bad_recipes_and_variants_are_refused(tiny_project):
    pool = generate(num_classes=4, samples_per_class=6, image_size=16, seed=0)
    with pytest.raises(ConfigError, match=r"--recipe\.shift must be >= 0"):
        recipe_cv.cross_validate(tiny_project, "student-lora", {"shift": -1}, pool, 2)
    size = tiny_project.data.image_size
    with pytest.raises(ConfigError, match=rf"--recipe\.shift \({size // 2}\) must be under half"):
        recipe_cv.cross_validate(tiny_project, "student-lora", {"shift": size // 2}, pool, 2)
    with pytest.raises(PipelineError, match="student-linear: only a variant that trains adapters"):
        recipe_cv.cross_validate(tiny_project, "student-linear", {}, pool, 2)


def test_the_command_writes_every_fold_and_prints_the_table(tiny_project, capsys, monkeypatch):
    for split, seed in (("train", 0), ("val", 1)):
        data = generate(num_classes=4, samples_per_class=6, image_size=16, seed=seed)
        save_split(paths.DOWNSTREAM / f"{split}.npz", data)
    monkeypatch.setattr(recipe_cv, "load_params", lambda: tiny_project)
    recipe_cv.main(
        ["--variants", "student-lora", "--recipe", "epochs=1", "--folds", "2", "--out", "cv.json"]
    )
    report = json.loads(Path("cv.json").read_text())
    assert report["images"] == 48 and report["folds"] == 2
    assert len(report["results"]["epochs=1"]["student-lora"]["folds"]) == 2
    out = capsys.readouterr().out
    assert "| variant | epochs=1 |" in out and "| `student-lora` |" in out
