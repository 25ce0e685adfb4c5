"""merge: fold each variant's adapters into a plain timm ViT and prove it changes nothing."""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from pipeline import PipelineError, adapters, models, paths
from pipeline.artifacts import ADAPTER_FILE, load_task, load_variant, merges
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.io import read_json, write_json
from pipeline.train.loop import predict
from pipeline.variants import all_variants


def main(argv: list[str]) -> None:
    params = load_params()
    (test,) = load_task("test")
    report = {}
    for variant in all_variants(params):
        if not merges(variant):
            continue
        model, meta = load_variant(variant.folder)
        merged = adapters.merge(model)
        spec = read_json(Path(meta["backbone"]) / "model.json")
        # The contract: a plain timm model, loadable strictly by someone without this project.
        plain = timm.create_model(spec["arch"], num_classes=meta["num_classes"], **spec["kwargs"])
        plain.load_state_dict(merged.state_dict(), strict=True)
        ref, out = predict(model, test), predict(plain.eval(), test)
        diff = (ref - out).abs().max().item()
        agree = (ref.argmax(1) == out.argmax(1)).float().mean().item() * 100
        if not diff <= params.merge.tolerance:
            raise PipelineError(
                f"{variant.name}: merged logits differ from unmerged by {diff:.3g} "
                f"(> merge.tolerance {params.merge.tolerance:g})"
            )
        folder = paths.MERGED / variant.merged_name
        models.save_model(
            folder,
            plain,
            spec["arch"],
            spec["kwargs"],
            meta["num_classes"],
            extra={"merged_from": variant.name, "classes": meta["classes"]},
        )
        report[variant.merged_name] = {
            "merged_from": variant.name,
            "max_abs_diff": diff,
            "top1_agreement": agree,
            "adapter_bytes": (variant.folder / ADAPTER_FILE).stat().st_size,
            "model_bytes": (folder / "model.safetensors").stat().st_size,
            "params_total": sum(p.numel() for p in plain.parameters()),
        }
        print(
            f"{variant.merged_name}: max |merged - unmerged| = {diff:.2e}, "
            f"top-1 agreement {agree:.1f}%"
        )
    write_json(paths.METRICS / "merge.json", report)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main)
