"""WeCoLoRA: weight copy into a shallower student, then LoRA few-shot feature distillation.

The student keeps teacher blocks i with i % r == 0 (the official code; `keep: last` takes the last
block of each group, as the paper's figure), plus embeddings and final norm: a plain timm ViT of
depth L / r. Unsupervised loss: L1 between the last block outputs (before the final norm) over
all tokens; options `per_block` (student block j against teacher block j·r + 1) and
`l1_kl` (L1 + channel KL, averaged).
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer

from pipeline import PipelineError, adapters, build, models, paths
from pipeline.artifacts import save_variant
from pipeline.config import Params, override
from pipeline.data import ImageSet, loader
from pipeline.distill.losses import channel_kl, l1_features
from pipeline.io import read_json
from pipeline.train import fit, is_main, pick_device
from pipeline.train.loop import LossFn
from pipeline.train.probe import fit_probe
from pipeline.variants import Variant


def kept_blocks(depth: int, ratio: int, keep: str) -> list[int]:
    if ratio < 1 or depth % ratio:
        raise ValueError(f"ratio {ratio} must be >= 1 and divide the depth {depth}")
    offset = {"first": 0, "last": ratio - 1}.get(keep)
    if offset is None:
        raise ValueError(f"keep must be first or last, got {keep!r}")
    return [i for i in range(depth) if i % ratio == offset]


def weight_copy(
    teacher: VisionTransformer, student: VisionTransformer, ratio: int, keep: str
) -> None:
    """Fill `student` (same widths, depth L / r) from the teacher's kept blocks."""
    kept = kept_blocks(len(teacher.blocks), ratio, keep)
    if len(student.blocks) != len(kept):
        raise ValueError(f"student depth {len(student.blocks)} != {len(kept)} kept blocks")
    position = {i: j for j, i in enumerate(kept)}
    state = {}
    for key, value in teacher.state_dict().items():
        if key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            if int(i) in position:
                state[f"blocks.{position[int(i)]}.{rest}"] = value
        else:
            state[key] = value
    student.load_state_dict(state, strict=True)


def block_outputs(model: VisionTransformer, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of every block (all tokens), before the final norm."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    outs = []
    for block in model.blocks:
        x = block(x)
        outs.append(x)
    return outs


def loss(teacher: VisionTransformer, ratio: int, mode: str) -> LossFn:
    if mode not in ("l1", "per_block", "l1_kl"):
        raise ValueError(f"loss must be l1, per_block or l1_kl, got {mode!r}")
    teacher.eval().requires_grad_(False)

    def feature_loss(student: VisionTransformer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = block_outputs(teacher, x)
        s = block_outputs(student, x)
        if mode == "per_block":  # student block j against teacher block j·r + 1 (official)
            return torch.stack(
                [l1_features(sj, t[min(j * ratio + 1, len(t) - 1)]) for j, sj in enumerate(s)]
            ).mean()
        main = l1_features(s[-1], t[-1])
        return main if mode == "l1" else (main + channel_kl(s[-1], t[-1])) / 2

    return feature_loss


def few_shot(data: ImageSet, fraction: float, seed: int) -> ImageSet:
    """⌊n_c · fraction⌋ images of each class c (at least one), drawn with a seeded shuffle."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(data.labels):
        idx = np.flatnonzero(data.labels == c)
        rng.shuffle(idx)
        picks.append(idx[: max(1, int(len(idx) * fraction))])
    return data.subset(np.sort(np.concatenate(picks)))


def distilled(
    params: Params,
    name: str,
    method: str,
    train: ImageSet,
    val: ImageSet,
    dirs: Callable[[str], dict[str, Path]],
) -> tuple[VisionTransformer, dict]:
    """Copy the teacher, distil `method`'s adapters on a few-shot subset, then fit a linear
    probe on the task. The student (adapters and head marked trainable: what its adapter file
    keeps) and what its record needs: `copy` (the frozen weight copy, unsaved), `kept` blocks,
    the `probe` and `distill` histories. `dirs(run)` gives a run's folders: the distillation
    `name` uses its checkpoint (and dvclive) folder, the probe `name-probe`, fitted in one go,
    only its dvclive one."""
    cfg = params.distill.wecolora
    teacher_dir = paths.BACKBONES / "teacher"
    teacher = models.load_model(teacher_dir)
    spec = read_json(teacher_dir / paths.MODEL_META)
    try:
        kept = kept_blocks(len(teacher.blocks), cfg.ratio, cfg.keep)
    except ValueError as e:
        raise PipelineError(f"distill.wecolora: {e}") from None
    kwargs = {**spec["kwargs"], "depth": len(kept)}
    student = models.create(spec["arch"], kwargs, 0)
    weight_copy(teacher, student, cfg.ratio, cfg.keep)
    copy = {"model": deepcopy(student), "arch": spec["arch"], "kwargs": kwargs}
    adapters.inject(student, method, **params.adapters.get(method, {}))
    adapter_names = set(adapters.trainable_state(student))
    history = []
    if adapter_names:  # `linear` is the weight copy alone: nothing to distil
        shots_train, shots_val = few_shot(train, cfg.few_shot, params.seed), val
        feature_loss = loss(teacher.to(pick_device()), cfg.ratio, cfg.loss)

        def val_feature_loss(model: VisionTransformer) -> tuple[float, None]:
            with torch.no_grad():
                losses = [
                    feature_loss(model, x.to(pick_device()), y).item()
                    for x, y in loader(shots_val, 256)
                ]
            return float(np.mean(losses)), None  # matching features: no top-1 to tell

        history = fit(
            student,
            shots_train,
            shots_val,
            override(params.train, cfg.recipe, "distill.wecolora.recipe"),
            seed=params.seed,
            desc=f"{name} distil",
            **dirs(name),
            loss_fn=feature_loss,
            evaluate_fn=val_feature_loss,
            fingerprint=build.fingerprint(name, student, teacher_dir, wecolora=cfg.model_dump()),
        )
    # the task head: a linear probe on the CLS token of the distilled, now frozen, student
    student.reset_classifier(len(train.classes))
    probe = fit_probe(
        student, train, val, params.train.probe_c_grid, dirs(f"{name}-probe").get("live_dir")
    )
    for key, p in student.named_parameters():
        p.requires_grad_(key in adapter_names or key.startswith("head."))
    return student, {"copy": copy, "kept": kept, "probe": probe, "distill": history}


def run(params: Params, variant: Variant, train: ImageSet, val: ImageSet) -> list[dict]:
    """The variant's student (`distilled`), saved beside its frozen weight copy."""
    student, record = distilled(
        params,
        variant.name,
        variant.method,
        train,
        val,
        lambda run: build.run_dirs("distill", run),
    )
    if not is_main():
        return record["probe"]
    copy_dir = variant.folder / "backbone"  # the frozen copy the adapters belong to
    copy = record["copy"]
    models.save_model(copy_dir, copy["model"], copy["arch"], copy["kwargs"], 0)
    save_variant(
        variant.folder,
        student,
        name=variant.name,
        role="student",
        backbone=copy_dir,
        classes=train.classes,
        history=record["probe"],
        distillation="wecolora",
        distill_history=record["distill"],
        kept_blocks=record["kept"],
    )
    return record["probe"]
