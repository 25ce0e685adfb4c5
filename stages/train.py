"""train <variant>: adapters (and head) on the frozen backbone of the variant's role."""

from __future__ import annotations

from pipeline import adapters, build
from pipeline.artifacts import load_task
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.train import is_main, seed_everything
from pipeline.variants import parse_variant


def main(argv: list[str]) -> None:
    (name,) = argv
    params = load_params()
    variant = parse_variant(name, params)
    train, val = load_task("train", "val")
    seed_everything(params.seed)
    model, history = build.train_variant(params, variant, train, val)
    if is_main():
        print(
            f"{name}: val top-1 {history[-1]['val_top1']:.2f}% "
            f"({adapters.param_counts(model)['params_trainable']:,} trainable parameters)"
        )


if __name__ == "__main__":
    run_stage(main)
