"""The merge stage's work: fold each variant's adapters into a plain timm ViT, prove on the test
set that it changes nothing, and save it where the downstream stages read merged models."""

from __future__ import annotations

import timm

from pipeline import adapters, models, paths
from pipeline.artifacts import backbone_folder, load_task, load_variant, merges
from pipeline.config import Params
from pipeline.io import read_json
from pipeline.runtime.parity import parity, require_equal
from pipeline.train.loop import predict
from pipeline.variants import all_variants


def merge_all(params: Params) -> dict:
    """Merge every mergeable variant of the run; the report reports/merge.json holds."""
    (test,) = load_task("test")
    report = {}
    for variant in all_variants(params):
        if not merges(variant):
            continue
        model, meta = load_variant(variant.folder)
        merged = adapters.merge(model)
        spec = read_json(backbone_folder(variant.folder, meta) / paths.MODEL_META)
        # The contract: a plain timm model, loadable strictly by someone without this project.
        plain = timm.create_model(spec["arch"], num_classes=meta["num_classes"], **spec["kwargs"])
        plain.load_state_dict(merged.state_dict(), strict=True)
        stats = parity(
            predict(model, test).numpy(), predict(plain.eval(), test).numpy(), test.labels
        )
        tol = params.merge.tolerance  # near-tied logits of a barely trained model: diff alone
        require_equal(
            variant.name, "the merged model", stats, tol, "merge.tolerance", agreement=False
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
            "max_abs_diff": stats["max_abs_diff"],
            "top1_agreement": stats["top1_agreement"],
            "adapter_bytes": (variant.folder / paths.ADAPTER_FILE).stat().st_size,
            "model_bytes": (folder / paths.MODEL_FILE).stat().st_size,
            "params_total": sum(p.numel() for p in plain.parameters()),
        }
        print(
            f"{variant.merged_name}: max |merged - unmerged| = {stats['max_abs_diff']:.2e}, "
            f"top-1 agreement {stats['top1_agreement']:.1f}%"
        )
    return report
