"""backbone <role>: the frozen backbone of a role, from the hub, a file, or pre-trained here."""

from __future__ import annotations

from pipeline import models, paths
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.io import write_json
from pipeline.models.pretrain import make_backbone
from pipeline.train import is_main


def main(argv: list[str]) -> None:
    (role,) = argv
    params = load_params()
    model, report = make_backbone(params, role)
    if not is_main():
        return  # every process holds the same weights: rank 0 writes them
    model.reset_classifier(0)
    report["params"] = sum(p.numel() for p in model.parameters())
    models.save_model(
        paths.BACKBONES / role, model, report["arch"], params.backbone_kwargs(role), num_classes=0
    )
    write_json(paths.METRICS / "backbone" / f"{role}.json", report)
    print(f"backbone {role}: {report}")


if __name__ == "__main__":
    run_stage(main)
