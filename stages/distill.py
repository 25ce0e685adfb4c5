"""distill <variant>: a student trained with a teacher (iDAT, WeCoLoRA or plain KD)."""

from __future__ import annotations

from pipeline import paths
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.data import load_split
from pipeline.distill import DRIVERS
from pipeline.train import seed_everything
from pipeline.variants import parse_variant


def main(argv: list[str]) -> None:
    (name,) = argv
    params = load_params()
    variant = parse_variant(name, params)
    train = load_split(paths.DOWNSTREAM / "train.npz")
    val = load_split(paths.DOWNSTREAM / "val.npz")
    seed_everything(params.seed)
    history = DRIVERS[variant.distill](params, variant, train, val)
    print(f"{name}: val top-1 {history[-1]['val_top1']:.2f}%")


if __name__ == "__main__":
    run_stage(main)
