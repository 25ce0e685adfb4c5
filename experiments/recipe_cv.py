"""Training recipes compared by k-fold cross-validation on train + val, the test split unseen.

    .venv/bin/python -m experiments.recipe_cv --variants teacher-lora student-lora \\
        --recipe epochs=20,shift=0 --recipe epochs=40,shift=1

Each `--recipe` is train.* settings over params.yaml's. Each variant trains with it on k - 1
folds of the pipeline's train + val images (stratified, seeded) on the pipeline's backbones (run
`make repro` first), and is scored on the fold left out. The mean held-out top-1 per variant and
recipe is printed as a table and written, with every fold's, to --out.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from sklearn.model_selection import StratifiedKFold

from pipeline import PipelineError, adapters, build, paths
from pipeline.artifacts import load_task
from pipeline.cli import run_stage
from pipeline.config import Params, load_params
from pipeline.config.checks import check_shift
from pipeline.config.loading import key_value, override
from pipeline.data import ImageSet
from pipeline.io import write_json
from pipeline.train import fit, seed_everything
from pipeline.variants import parse_variant


def parse_recipe(text: str) -> dict[str, Any]:
    """`epochs=40,shift=1` -> {"epochs": 40, "shift": 1} (values read as YAML)."""
    changes = {}
    for part in filter(None, text.split(",")):
        key, value = key_value(part, "--recipe")
        changes[key] = yaml.safe_load(value)
    return changes


def cross_validate(
    params: Params,
    name: str,
    changes: dict[str, Any],
    pool: ImageSet,
    folds: int,
    seed: int = 0,
) -> list[float]:
    """Held-out top-1 of variant `name` trained with train.* `changes` on each split of `pool`
    into `folds` stratified folds (shuffled by `seed`), in fold order."""
    variant = parse_variant(name, params)
    if variant.distill or not adapters.has_adapters(variant.method):
        raise PipelineError(
            f"{name}: only a variant that trains adapters alone takes a training recipe here"
        )
    cfg = override(params.train, changes, "--recipe")
    check_shift(cfg, params.data.image_size, "--recipe")
    recipe = build.recipe(params, variant.method, cfg)
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = []
    with tempfile.TemporaryDirectory() as scratch:
        for i, (train, held) in enumerate(splits.split(np.zeros(len(pool)), pool.labels)):
            seed_everything(params.seed)
            model = build.adapted(
                params, paths.BACKBONES / variant.role, variant.method, len(pool.classes)
            )
            history = fit(
                model,
                pool.subset(train),
                pool.subset(held),
                recipe,
                seed=params.seed,
                checkpoint_dir=Path(scratch) / f"fold{i}",
                desc=f"{name} fold {i + 1}/{folds}",
            )
            scores.append(history[-1]["val_top1"])  # fit's last epoch scored the held fold
    return scores


def table(results: dict[str, dict[str, dict]]) -> str:
    """Markdown: a row per variant, a column per recipe, the mean held-out top-1."""
    recipes = list(results)
    variants = list(next(iter(results.values())))
    lines = ["| variant | " + " | ".join(recipes) + " |", "| --- |" + " --- |" * len(recipes)]
    for v in variants:
        cells = " | ".join(f"{results[r][v]['mean']:.1f}" for r in recipes)
        lines.append(f"| `{v}` | {cells} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.recipe_cv", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--variants", nargs="+", required=True, metavar="VARIANT")
    parser.add_argument("--recipe", action="append", required=True, metavar="KEY=VALUE,...")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="shuffles the folds")
    parser.add_argument("--out", default=str(paths.REPORTS / "recipe_cv.json"))
    args = parser.parse_args(argv)
    if args.folds < 2:
        raise PipelineError(f"--folds must be at least 2, got {args.folds}")
    params = load_params()
    train, val = load_task("train", "val")
    pool = ImageSet(
        np.concatenate([train.images, val.images]),
        np.concatenate([train.labels, val.labels]),
        train.classes,
    )
    results: dict[str, dict[str, dict]] = {}
    for text in args.recipe:
        changes = parse_recipe(text)
        results[text] = {}
        for name in args.variants:
            scores = cross_validate(params, name, changes, pool, args.folds, args.seed)
            results[text][name] = {"mean": float(np.mean(scores)), "folds": scores}
    write_json(
        args.out,
        {"folds": args.folds, "seed": args.seed, "images": len(pool), "results": results},
    )
    print(table(results))
    print(f"written to {args.out}")


if __name__ == "__main__":
    run_stage(main)
