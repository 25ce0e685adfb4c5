"""One method on the 19 VTAB-1K tasks: train on train800val200, top-1 on test, the papers' table.

    .venv/bin/python -m experiments.vtab --root /data/vtab-1k --method arc
Per task: the method's adapters and a new head on the preset's frozen backbone, trained with the
preset's recipe on all 1,000 training images (the protocol holds none out), then top-1 on the
task's test split. Each finished task is saved at once to <out>/<method>.json and skipped by a
rerun with the same settings; training checkpoints every epoch, so a killed run resumes inside
its task. <out>/<method>.md is the table, beside the published rows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from experiments.vtab_table import GROUP_OF, TASKS, markdown, summarise
from pipeline import PipelineError, adapters, build, models, paths
from pipeline.adapters import METHODS
from pipeline.cli import run_stage
from pipeline.config import Params
from pipeline.data import ImageSet
from pipeline.data.arrays import random_split
from pipeline.data.folders import load_vtab
from pipeline.io import atomic_path, digest, read_json, write_json
from pipeline.preset import resolve
from pipeline.train import evaluate, fit, seed_everything
from pipeline.variants import Variant, parse_variant

DEFAULT_PRESETS = {
    "arc": "configs/vtab-arc.yaml",
    "arc_att": "configs/vtab-arc.yaml",
    "consolidator": "configs/vtab-consolidator.yaml",
    "lora": "configs/vtab-lora.yaml",
    "ssf": "configs/vtab-ssf.yaml",
}
# Training images scored after each epoch: a check that training converges (they are trained
# on, so it is no validation; the protocol keeps no images apart).
MONITORED = 200


def _variant(params: Params, method: str, preset: str) -> Variant:
    """The preset's variant of `method`: its role names the backbone."""
    for name in params.train.variants:
        variant = parse_variant(name, params)
        if variant.method == method:
            return variant
    raise PipelineError(
        f"{preset}: train.variants has no {method} variant "
        f"({', '.join(params.train.variants)}); give --preset"
    )


def settings(params: Params, variant: Variant) -> dict[str, Any]:
    """What makes two runs of a task the same (besides its data)."""
    cfg = params.backbone[variant.role]
    return {
        "method": variant.method,
        "options": params.adapters.get(variant.method, {}),
        "recipe": {  # the method's own: other variants and rates do not matter here
            k: v
            for k, v in build.recipe(params, variant.method).model_dump().items()
            if k not in ("variants", "method_lr")
        },
        "backbone": {
            "arch": cfg.arch,
            "kwargs": params.backbone_kwargs(variant.role),
            "weights": cfg.weights,
        },
        "seed": params.seed,
    }


def save_backbone(params: Params, role: str, folder: Path) -> None:
    """The frozen backbone of `role`, saved where build.adapted reads it."""
    cfg = params.backbone[role]
    if cfg.weights == "pretrain":
        raise PipelineError(
            f"backbone.{role}.weights: pretrain (on glyphs) belongs to the default pipeline; "
            "the VTAB runner takes timm, none or a checkpoint path"
        )
    kwargs = params.backbone_kwargs(role)
    model = models.create(cfg.arch, kwargs, 0)
    models.load_weights(model, cfg.weights, cfg.arch, kwargs, key=f"backbone.{role}.weights")
    models.save_model(folder, model, cfg.arch, kwargs, num_classes=0)


def task_folders(root: str | Path, tasks: list[str]) -> dict[str, Path]:
    """Each task's folder; a missing one is an error before anything trains."""
    folders = {task: Path(root) / task for task in tasks}
    for folder in folders.values():
        if not folder.is_dir():
            raise PipelineError(
                f"--root: no VTAB-1K task folder '{folder}' (<root>/<task> holding "
                "train800val200.txt and test.txt; --tasks runs a subset)"
            )
    return folders


def load_task(folder: Path, size: int) -> tuple[ImageSet, ImageSet]:
    """(train800val200, test); train800 and val200 are joined where they come as two lists."""
    parts = load_vtab(folder, size)
    if "trainval" in parts:
        return parts["trainval"], parts["test"]
    train, val = parts["train"], parts["val"]
    joined = ImageSet(
        np.concatenate([train.images, val.images]),
        np.concatenate([train.labels, val.labels]),
        train.classes,
    )
    return joined, parts["test"]


def run_task(
    params: Params, variant: Variant, backbone: Path, folder: Path, data: str
) -> dict[str, Any]:
    """Train the variant's method on one task (`data`: its lists' digest) and score it on the
    task's test split."""
    method = variant.method
    train, test = load_task(folder, params.data.image_size)
    seed_everything(params.seed)
    model = build.adapted(params, backbone, method, len(train.classes))
    monitored, _ = random_split(len(train), [min(MONITORED, len(train))], params.seed)
    start = time.perf_counter()
    history = fit(
        model,
        train,
        train.subset(monitored),
        build.recipe(params, method),
        seed=params.seed,
        checkpoint_dir=paths.CHECKPOINTS / "vtab" / method / folder.name,
        desc=f"{method} {folder.name}",
        fingerprint={"settings": settings(params, variant), "data": data},
    )
    counts = adapters.param_counts(model)
    return {
        "group": GROUP_OF[folder.name],
        "top1": evaluate(model, test)[1],
        "train_top1": history[-1]["val_top1"],
        "train_images": len(train),
        "test_images": len(test),
        "classes": len(train.classes),
        "params_adapter": counts["params_adapter"],
        "params_trainable": counts["params_trainable"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def write_report(out: Path, method: str, preset: str, params: Params, report: dict) -> None:
    """<out>/<method>.json and .md, rewritten after every task (atomically)."""
    tasks = {t: report["tasks"][t] for t in TASKS if t in report["tasks"]}
    summary = summarise(tasks)
    write_json(out / f"{method}.json", {**report, "tasks": tasks, **summary})
    cfg = params.backbone[report["role"]]
    about = (
        f"Top-1 (%) on each task's test split after training on its train800val200; backbone "
        f"`{cfg.arch}` (weights: {cfg.weights}), preset `{preset}`; each task's settings are "
        f"in {method}.json."
    )
    with atomic_path(out / f"{method}.md") as tmp:
        tmp.write_text(markdown(method, tasks, summary, about))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.vtab", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--root", required=True, help="the VTAB-1K folder: <root>/<task>/")
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=TASKS, metavar="TASK")
    parser.add_argument("--preset", help="default: configs/vtab-<method>.yaml (ARC's for arc_att)")
    parser.add_argument("--weights", action="append", default=[], metavar="ROLE=PATH")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=str(paths.REPORTS / "vtab"))
    args = parser.parse_args(argv)
    preset = args.preset or DEFAULT_PRESETS.get(args.method)
    if preset is None:
        raise PipelineError(f"--preset: no VTAB-1K preset for {args.method}; give one")
    _, params = resolve(preset, weights=args.weights, sets=args.set)
    variant = _variant(params, args.method, preset)
    folders = task_folders(args.root, [t for t in TASKS if t in args.tasks])
    run = json.loads(json.dumps(settings(params, variant)))  # as it reads back from JSON
    out = Path(args.out)
    old = out / f"{args.method}.json"
    # every task keeps the settings it ran with: per-task tuning (--set train.lr=...) is part
    # of some methods' protocol, so a rerun replaces only the tasks it runs
    report = {
        "method": args.method,
        "preset": preset,
        "role": variant.role,
        "tasks": read_json(old)["tasks"] if old.is_file() else {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        backbone = Path(tmp) / "backbone"
        for task, folder in tqdm(folders.items(), desc=f"VTAB-1K {args.method}", unit="task"):
            data = digest(*sorted(folder.glob("*.txt")))  # the task's image lists
            done = report["tasks"].get(task)
            if done and done["settings"] == run and done["data"] == data:
                tqdm.write(f"{task}: done before, top-1 {done['top1']:.2f}%")
                continue
            if not backbone.is_dir():  # built once, and only when something trains
                save_backbone(params, variant.role, backbone)
            result = run_task(params, variant, backbone, folder, data)
            report["tasks"][task] = {**result, "settings": run, "data": data}
            write_report(out, args.method, preset, params, report)
            tqdm.write(f"{task}: top-1 {result['top1']:.2f}%")
    write_report(out, args.method, preset, params, report)
    print(f"wrote {out / args.method}.json and .md")


if __name__ == "__main__":
    run_stage(main)
