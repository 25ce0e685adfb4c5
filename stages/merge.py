"""merge: fold each variant's adapters into a plain timm ViT and prove it changes nothing."""

from __future__ import annotations

import torch

from pipeline import paths
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.io import write_json
from pipeline.merging import merge_all


def main(argv: list[str]) -> None:
    write_json(paths.METRICS / "merge.json", merge_all(load_params()))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main)
