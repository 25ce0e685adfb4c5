"""The seeds stage's work: the methods' claims over several seeds, with their spread.

Per seed: iDAT (each `seeds.idat_kd`) against the same adapter trained alone on the larger
backbone, WeCoLoRA's student with each of `seeds.wecolora_methods` (enhanced LoRA, plain q/v
LoRA, the weight copy alone), and the continual study (each learner's teacher, student alone,
KD and CDL-Prompt students). Every run of a seed starts from that seed; the backbones and the
data stay the same, so the spread is that of initialisation and data order. Each finished seed
is kept under `checkpoints/seeds/`, so a stopped study resumes where it stopped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from pipeline import build, paths
from pipeline.artifacts import load_task
from pipeline.config import Params
from pipeline.continual.study import run_learner
from pipeline.continual.tasks import class_order, split_tasks
from pipeline.data import ImageSet
from pipeline.distill import wecolora
from pipeline.distill.idat import build_pair, loss
from pipeline.io import digest, read_json, write_json
from pipeline.train import evaluate, fit, seed_everything


def idat_runs(params: Params, splits: list[ImageSet], checkpoints: Path) -> dict[str, dict]:
    """{"baseline": …, "<kd>": …}: test and val top-1 (%) of the larger backbone's model, alone
    and as iDAT's student with each KD term."""
    train, val, test = splits
    method, k = params.seeds.idat_method, len(train.classes)
    cfg = params.distill.idat

    def trained(model, scored, run: str, **kw) -> dict[str, float]:
        """Fit `model` from the seed; val top-1 at the end and `scored`'s test top-1."""
        history = fit(
            model,
            train,
            val,
            build.recipe(params, method),
            seed=params.seed,
            checkpoint_dir=checkpoints / run,
            desc=f"seed {params.seed} {method} {run}",
            **kw,
        )
        return {"val_top1": history[-1]["val_top1"], "top1": evaluate(scored, test)[1]}

    out = {}
    for kd in params.seeds.idat_kd:
        seed_everything(params.seed)
        pair, large, _ = build_pair(params, method, k)
        out[kd] = trained(pair, pair.student, f"idat-{kd}", loss_fn=loss(kd, cfg.temperature))
    seed_everything(params.seed)  # the same larger backbone and adapter, trained alone
    alone = build.adapted(params, paths.BACKBONES / large, method, k)
    out["baseline"] = trained(alone, alone, "baseline")
    return out


def wecolora_runs(params: Params, splits: list[ImageSet], checkpoints: Path) -> dict[str, dict]:
    """{"<method>": …}: test and val top-1 (%) of WeCoLoRA's probed student per method."""
    train, val, test = splits
    out = {}
    for method in params.seeds.wecolora_methods:
        seed_everything(params.seed)
        student, record = wecolora.distilled(
            params,
            f"seed {params.seed} wecolora {method}",
            method,
            train,
            val,
            lambda run: {"checkpoint_dir": checkpoints / run.replace(" ", "-")},
        )
        out[method] = {
            "val_top1": record["probe"][-1]["val_top1"],
            "top1": evaluate(student, test)[1],
        }
    return out


def continual_runs(params: Params, splits: list[ImageSet], checkpoints: Path) -> dict[str, float]:
    """{"<learner>-<run>": class-incremental average accuracy (%)} for every learner and run."""
    cfg = params.continual
    order = class_order(len(splits[0].classes), cfg.class_order)
    tasks = {
        name: split_tasks(data, order, cfg.tasks)
        for name, data in zip(("train", "val", "test"), splits, strict=True)
    }
    out = {}
    for learner in cfg.learners:
        results, _ = run_learner(params, learner, tasks, len(order), checkpoints / learner)
        out |= {f"{learner}-{run}": r["average_accuracy"] for run, r in results.items()}
    return out


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
    }


def summarise(rows: list[dict], learners: list[str], kds: list[str]) -> dict:
    """Mean ± std per run, and the paired differences (per seed, then their mean ± std):
    iDAT − the adapter alone, WeCoLoRA's enhanced LoRA − each other method, CDL-Prompt − the
    student alone."""
    figures = {f"idat-{name}": [r["idat"][name]["top1"] for r in rows] for name in rows[0]["idat"]}
    figures |= {
        f"wecolora-{name}": [r["wecolora"][name]["top1"] for r in rows]
        for name in rows[0]["wecolora"]
    }
    figures |= {name: [r["continual"][name] for r in rows] for name in rows[0]["continual"]}
    paired = {
        f"idat_{kd}_minus_baseline": [
            r["idat"][kd]["top1"] - r["idat"]["baseline"]["top1"] for r in rows
        ]
        for kd in kds
    }
    enhanced, *others = rows[0]["wecolora"] or [None]  # the first listed against the others
    paired |= {
        f"wecolora_{enhanced}_minus_{other}": [
            r["wecolora"][enhanced]["top1"] - r["wecolora"][other]["top1"] for r in rows
        ]
        for other in others
    }
    paired |= {
        f"{learner}_cdl_minus_student": [
            r["continual"][f"{learner}-cdl"] - r["continual"][f"{learner}-student"] for r in rows
        ]
        for learner in learners
    }
    val = {f"idat-{kd}": _spread([r["idat"][kd]["val_top1"] for r in rows]) for kd in kds}
    return {
        "runs": {name: _spread(v) for name, v in figures.items()},
        "paired": {name: {**_spread(v), "per_seed": v} for name, v in paired.items()},
        # the kd a user should take, chosen on the val split (never on test)
        "idat_kd_by_val": max(kds, key=lambda kd: val[f"idat-{kd}"]["mean"]),
        "val": val,
    }


def seed_study(params: Params) -> dict:
    """reports/seeds.json: per seed every figure, and the summary over seeds."""
    splits = load_task("train", "val", "test")
    cfg = params.seeds
    inputs = digest(paths.BACKBONES, paths.DOWNSTREAM)
    folder = paths.CHECKPOINTS / "seeds"
    rows = []
    for seed in range(params.seed, params.seed + cfg.count):
        at = params.model_copy(update={"seed": seed})
        key = {"params": at.model_dump(mode="json"), "inputs": inputs}
        done = folder / f"seed{seed}.json"
        if done.is_file() and (row := read_json(done)).get("key") == key:
            print(f"seed {seed}: done before, kept")
        else:
            row = {
                "key": key,
                "seed": seed,
                "idat": idat_runs(at, splits, folder / f"seed{seed}"),
                "wecolora": wecolora_runs(at, splits, folder / f"seed{seed}" / "wecolora"),
                "continual": continual_runs(at, splits, folder / f"seed{seed}" / "continual"),
            }
            write_json(done, row)  # a stopped study keeps every finished seed
        rows.append({k: v for k, v in row.items() if k != "key"})
        print(f"seed {seed}: {json.dumps(rows[-1])}")
    report = {
        "seeds": [r["seed"] for r in rows],
        "idat_method": cfg.idat_method,
        "rows": rows,
        **summarise(rows, list(params.continual.learners), list(cfg.idat_kd)),
    }
    shutil.rmtree(folder, ignore_errors=True)  # every seed finished: nothing to resume
    return report
