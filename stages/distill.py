"""distill: every student of distill.variants, trained with its teacher (iDAT, WeCoLoRA, KD).

One stage for all, so models/distilled exists (with its index) even when the list is empty and
the downstream stages can always depend on it.
"""

from __future__ import annotations

from pipeline import paths
from pipeline.artifacts import load_task
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.distill import DRIVERS
from pipeline.io import write_json
from pipeline.train import is_main, seed_everything
from pipeline.variants import parse_variant


def main(argv: list[str]) -> None:
    params = load_params()
    train, val = load_task("train", "val")
    if is_main():  # declared plots, even if empty
        (paths.LIVE / "distill").mkdir(parents=True, exist_ok=True)
    for name in params.distill.variants:
        variant = parse_variant(name, params)
        seed_everything(params.seed)
        history = DRIVERS[variant.distill](params, variant, train, val)
        if is_main():
            print(f"{name}: val top-1 {history[-1]['val_top1']:.2f}%")
    if is_main():
        write_json(paths.DISTILLED / "index.json", {"variants": params.distill.variants})


if __name__ == "__main__":
    run_stage(main)
