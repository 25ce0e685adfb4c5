"""Distillation losses and the three drivers (iDAT, WeCoLoRA, plain KD) on tiny real ViTs."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from pipeline import adapters, build, paths
from pipeline.artifacts import load_variant
from pipeline.data import to_tensor
from pipeline.distill import idat, kd, losses, wecolora
from pipeline.variants import parse_variant
from tests.conftest import TINY


def test_kl_logits_is_hinton_kd():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    manual = F.softmax(t / 2, -1) * (F.log_softmax(t / 2, -1) - F.log_softmax(s / 2, -1))
    expected = manual.sum(-1).mean() * 4
    torch.testing.assert_close(losses.kl_logits(s, t, 2.0), expected)
    torch.testing.assert_close(losses.kl_logits(s, t, 2.0, t_squared=False), expected / 4)
    assert losses.kl_logits(t, t, 3.0).abs() < 1e-6


def test_feature_losses():
    a, b = torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    torch.testing.assert_close(losses.l1_features(a, b), (a - b).abs().mean())
    torch.testing.assert_close(losses.mse_logits(a, b), ((a - b) ** 2).mean())
    assert losses.channel_kl(a, a).abs() < 1e-6 < losses.channel_kl(a, b)


def test_idat_one_backward_moves_both_models(tiny_vit, glyph_data):
    """The official code's trap: its teacher never steps without AMP. Here both do."""
    student = adapters.inject(tiny_vit(embed_dim=48, num_heads=3), "lora")
    teacher = adapters.inject(tiny_vit(), "lora")
    pair = idat.Pair(student, teacher)
    before = {n: p.detach().clone() for n, p in pair.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in pair.parameters() if p.requires_grad], lr=1e-2)
    x, y = to_tensor(glyph_data.images[:16]), torch.from_numpy(glyph_data.labels[:16])
    for kd_kind in ("mse", "kl"):
        for _ in range(2):
            opt.zero_grad()
            idat.loss(kd_kind, 5.0)(pair, x, y).backward()
            opt.step()
    moved = {
        n for n, p in pair.named_parameters() if p.requires_grad and not torch.equal(p, before[n])
    }
    assert moved == set(before)
    assert any(n.startswith("teacher.blocks") for n in moved)
    zs, zt = student(x), teacher(x)
    total = idat.loss("mse", 5.0)(pair, x, y)
    expected = F.cross_entropy(zs, y) + F.cross_entropy(zt, y) + F.mse_loss(zs, zt)
    torch.testing.assert_close(total, expected)
    with pytest.raises(ValueError, match="kd must be mse or kl"):
        idat.loss("l2", 1.0)


def test_idat_through_the_training_loop_steps_both_groups(tmp_path, tiny_vit, glyph_data):
    from pipeline.config import TrainConfig
    from pipeline.train import fit

    pair = idat.Pair(
        adapters.inject(tiny_vit(embed_dim=48, num_heads=3), "arc"),
        adapters.inject(tiny_vit(), "arc"),
    )
    before = {n: p.detach().clone() for n, p in pair.named_parameters() if p.requires_grad}
    fit(
        pair,
        glyph_data,
        glyph_data,
        TrainConfig(epochs=2, batch_size=32, lr=1e-2),
        seed=0,
        checkpoint_dir=tmp_path,
        loss_fn=idat.loss("mse", 5.0),
    )
    for side in ("student", "teacher"):
        moved = [
            n
            for n, p in pair.named_parameters()
            if n.startswith(f"{side}.blocks") and n in before and not torch.equal(p, before[n])
        ]
        assert moved, f"the {side}'s adapters did not move"
    assert len(pair.param_group_modules()) == 2


def test_kd_teacher_stays_frozen(tiny_vit, glyph_data):
    teacher = tiny_vit(embed_dim=48, num_heads=3)
    frozen = copy.deepcopy(teacher.state_dict())
    student = adapters.inject(tiny_vit(), "lora")
    fn = kd.loss(teacher, task_weight=0.3, distill_weight=0.7, temperature=4.0)
    x, y = to_tensor(glyph_data.images[:8]), torch.from_numpy(glyph_data.labels[:8])
    out = fn(student, x, y)
    out.backward()
    with torch.no_grad():
        expected = 0.3 * F.cross_entropy(student(x), y) + 0.7 * losses.kl_logits(
            student(x), teacher(x), 4.0
        )
    torch.testing.assert_close(out.detach(), expected)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize(
    ("depth", "ratio", "keep", "kept"),
    [
        (12, 2, "first", [0, 2, 4, 6, 8, 10]),
        (12, 3, "first", [0, 3, 6, 9]),
        (12, 2, "last", [1, 3, 5, 7, 9, 11]),
    ],
)
def test_kept_blocks(depth, ratio, keep, kept):
    assert wecolora.kept_blocks(depth, ratio, keep) == kept


def test_kept_blocks_errors():
    with pytest.raises(ValueError, match="must be >= 1 and divide the depth"):
        wecolora.kept_blocks(4, 3, "first")
    with pytest.raises(ValueError, match="keep must be first or last"):
        wecolora.kept_blocks(4, 2, "middle")


def test_weight_copy_keeps_the_chosen_blocks_and_is_plain_timm(tiny_vit):
    teacher = tiny_vit(num_classes=0, depth=4)
    student = tiny_vit(num_classes=0, depth=2)
    wecolora.weight_copy(teacher, student, ratio=2, keep="last")
    for j, i in enumerate([1, 3]):
        for (_, a), (_, b) in zip(
            student.blocks[j].state_dict().items(), teacher.blocks[i].state_dict().items()
        ):
            assert torch.equal(a, b)
    assert torch.equal(student.pos_embed, teacher.pos_embed)
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=0, **{**TINY, "depth": 2})
    plain.load_state_dict(student.state_dict(), strict=True)


def test_block_outputs_and_feature_loss(tiny_vit, glyph_data):
    model = tiny_vit(num_classes=0).eval()
    x = to_tensor(glyph_data.images[:4])
    outs = wecolora.block_outputs(model, x)
    assert len(outs) == TINY["depth"]
    torch.testing.assert_close(model.norm(outs[-1]), model.forward_features(x))
    # a full copy (ratio 1) matches its teacher's last block exactly
    for mode in ("l1", "l1_kl"):
        assert wecolora.loss(model, 1, mode)(copy.deepcopy(model), x, None).abs() < 1e-6
    with pytest.raises(ValueError, match="loss must be"):
        wecolora.loss(model, 1, "l2")


def test_per_block_pairs_student_block_j_with_teacher_block_jr_plus_1(tiny_vit, glyph_data):
    teacher = tiny_vit(num_classes=0, depth=6).eval()
    student = tiny_vit(num_classes=0, depth=2).eval()
    wecolora.weight_copy(teacher, student, ratio=3, keep="first")
    x = to_tensor(glyph_data.images[:4])
    t, s = wecolora.block_outputs(teacher, x), wecolora.block_outputs(student, x)
    expected = (losses.l1_features(s[0], t[1]) + losses.l1_features(s[1], t[4])) / 2
    torch.testing.assert_close(wecolora.loss(teacher, 3, "per_block")(student, x, None), expected)


def test_few_shot_takes_floor_of_each_class(glyph_data):
    shots = wecolora.few_shot(glyph_data, 0.3, seed=0)  # 24 per class -> 7
    assert np.bincount(shots.labels).tolist() == [7, 7, 7, 7]
    again = wecolora.few_shot(glyph_data, 0.3, seed=0)
    np.testing.assert_array_equal(shots.images, again.images)
    assert np.bincount(wecolora.few_shot(glyph_data, 0.001, seed=0).labels).tolist() == [1] * 4


@pytest.mark.parametrize(
    "name",
    [
        "student-lora-idat",
        "student-lora_qkv-wecolora",
        "student-linear-wecolora",
        "student-lora-kd",
    ],
)
def test_drivers_end_in_a_mergeable_student(tiny_project, glyph_data, name):
    params = tiny_project
    variant = parse_variant(name, params)
    if variant.distill == "kd":
        build.train_variant(params, parse_variant("teacher-lora", params), glyph_data, glyph_data)
    history = {"idat": idat.run, "wecolora": wecolora.run, "kd": kd.run}[variant.distill](
        params, variant, glyph_data, glyph_data
    )
    assert math.isfinite(history[-1]["val_top1"])
    # epochs of the training loop, or one row for WeCoLoRA's probe: fitted, not stepped
    assert len(history) == (1 if variant.distill == "wecolora" else 2)
    model, meta = load_variant(variant.folder)
    assert meta["distillation"] == variant.distill
    x = to_tensor(glyph_data.images[:6])
    with torch.no_grad():
        ref = model(x)
        if adapters.has_adapters(variant.method):
            torch.testing.assert_close(adapters.merge(model)(x), ref, rtol=0, atol=1e-4)
    assert ref.shape == (6, 4)
    if variant.distill == "idat":  # the larger backbone is the student
        assert model.embed_dim == 48
        teacher, tmeta = load_variant(variant.folder / "teacher")
        assert teacher.embed_dim == 32 and tmeta["variant"] == "teacher-lora-idat"
    if variant.distill == "wecolora":  # half the teacher's depth
        assert len(model.blocks) == 2 and meta["kept_blocks"] == [0, 2]
        # matching features has a loss but no top-1: none is made up (a NaN is not JSON)
        saved = (variant.folder / paths.ADAPTER_META).read_text()
        rows = json.loads(saved, parse_constant=_refuse)["distill_history"]
        if variant.method == "linear":  # the weight copy alone: nothing was distilled
            assert rows == []
        else:
            assert len(rows) == 2 and all("val_top1" not in r for r in rows)
            assert all(math.isfinite(r["val_loss"]) for r in rows)
            curves = paths.LIVE / "distill" / name / "plots" / "metrics"
            assert (curves / "val" / "loss.tsv").is_file()
            assert not (curves / "val" / "top1.tsv").exists()


def _refuse(constant: str) -> None:
    """`json.loads`'s `parse_constant`: NaN and Infinity are not JSON."""
    raise AssertionError(f"{constant} in a JSON file")
