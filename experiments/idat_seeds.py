"""The same adapter on the larger backbone, with and without iDAT, over several seeds.

Run after `make repro` (it reads the prepared data and frozen backbones):
    .venv/bin/python -m experiments.idat_seeds --seeds 0 1 2 --method arc
Writes reports/idat_seeds.json: per seed the test top-1 of both, and mean ± std.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from pipeline import build, paths
from pipeline.artifacts import load_task
from pipeline.config import load_params
from pipeline.distill.idat import build_pair, loss
from pipeline.io import write_json
from pipeline.train import evaluate, fit, seed_everything
from pipeline.variants import parse_variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--method", default="arc")
    parser.add_argument("--kd", choices=["mse", "kl"], help="default: distill.idat.kd")
    parser.add_argument("--out", default=str(paths.REPORTS / "idat_seeds.json"))
    args = parser.parse_args()
    base = load_params()
    if args.kd:
        idat = base.distill.idat.model_copy(update={"kd": args.kd})  # argparse checked it
        base = base.model_copy(update={"distill": base.distill.model_copy(update={"idat": idat})})
    train, val, test = load_task("train", "val", "test")
    k = len(train.classes)
    rows = []
    for seed in args.seeds:
        params = base.model_copy(update={"seed": seed})
        variant = parse_variant(f"student-{args.method}-idat", params)
        runs = {}
        with tempfile.TemporaryDirectory() as tmp:
            seed_everything(seed)
            pair, large, _ = build_pair(params, args.method, k)
            cfg = params.distill.idat
            fit(
                pair,
                train,
                val,
                build.recipe(params, args.method),
                seed=seed,
                checkpoint_dir=f"{tmp}/idat",
                desc=f"seed {seed} {variant.name}",
                loss_fn=loss(cfg.kd, cfg.temperature),
            )
            runs["with_idat"] = evaluate(pair.student, test)[1]
            runs["idat_teacher"] = evaluate(pair.teacher, test)[1]
            seed_everything(seed)  # the same larger backbone and adapter, trained alone
            alone = build.adapted(params, paths.BACKBONES / large, args.method, k)
            fit(
                alone,
                train,
                val,
                build.recipe(params, args.method),
                seed=seed,
                checkpoint_dir=f"{tmp}/alone",
                desc=f"seed {seed} without iDAT",
            )
            runs["without_idat"] = evaluate(alone, test)[1]
        rows.append({"seed": seed, **runs})
        print(rows[-1], flush=True)
    summary = {
        key: {
            "mean": float(np.mean([r[key] for r in rows])),
            "std": float(np.std([r[key] for r in rows], ddof=1)) if len(rows) > 1 else 0.0,
        }
        for key in ("without_idat", "with_idat", "idat_teacher")
    }
    write_json(
        args.out,
        {
            "method": args.method,
            "kd": base.distill.idat.kd,
            "backbone": "the larger of the two",
            "runs": rows,
            "summary": summary,
        },
    )
    for key, s in summary.items():
        print(f"{key:14s} {s['mean']:.2f} ± {s['std']:.2f}")


if __name__ == "__main__":
    main()
