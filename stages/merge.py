"""merge: fold each variant's adapters into a plain timm ViT and prove it changes nothing."""

from __future__ import annotations

import torch

from pipeline import summary
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.merging import merge_all


def main(argv: list[str]) -> None:
    summary.save("merge", merge_all(load_params()))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main)
