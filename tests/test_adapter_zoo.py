"""Every registered method: official sizes, gradients, exact merging, compact storage."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from pipeline import PipelineError, adapters
from pipeline.adapters import arc, consolidator
from pipeline.data import to_tensor

MERGEABLE = ["lora", "lora_qkv", "lora_qv", "arc", "arc_att", "consolidator", "ssf"]


def _perturb(model: torch.nn.Module, std: float = 0.02) -> None:
    """Non-zero random adapter parameters, so merging has something to prove."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and not name.startswith("head."):
                p.add_(torch.randn_like(p) * std)


@pytest.fixture(scope="module")
def vit_b():
    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_224", num_classes=10).eval()


def test_registry_names():
    assert set(adapters.METHODS) == {*MERGEABLE, "adapter", "linear"}
    assert not adapters.is_mergeable("adapter")
    assert all(adapters.is_mergeable(m) for m in MERGEABLE)


@pytest.mark.parametrize("method", MERGEABLE)
def test_merge_is_exact_on_vit_b16(vit_b, method):
    model = adapters.inject(copy.deepcopy(vit_b), method).eval()
    _perturb(model)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
        base = vit_b(x)
        merged = adapters.merge(model)
        out = merged(x)
    assert (ref - base).abs().max() > 1e-3, "adapters must change the output for a real test"
    assert (out - ref).abs().max().item() <= 1e-4
    assert type(merged) is VisionTransformer
    assert not [m for m in merged.modules() if type(m).__module__.startswith("pipeline.")]
    plain = timm.create_model("vit_base_patch16_224", num_classes=10)
    plain.load_state_dict(merged.state_dict(), strict=True)


def _count(model, prefix_filter) -> int:
    return sum(
        p.numel() for n, p in model.named_parameters() if p.requires_grad and prefix_filter(n)
    )


def test_official_trainable_counts_on_vit_b16(vit_b):
    not_head = lambda n: not n.startswith("head.")  # noqa: E731
    assert _count(adapters.inject(copy.deepcopy(vit_b), "arc"), not_head) == 96_432
    assert _count(adapters.inject(copy.deepcopy(vit_b), "arc_att"), not_head) == 48_216
    model = adapters.inject(copy.deepcopy(vit_b), "consolidator")
    assert _count(model, lambda n: ".branches." in n) == 304_128
    # besides the branches: all LayerNorms, all block-linear biases and the head train
    others = {n for n, p in model.named_parameters() if p.requires_grad and ".branches." not in n}
    assert "norm.weight" in others and "blocks.11.mlp.fc2.base.bias" in others
    assert not any(n.endswith("base.weight") for n in others)
    assert _count(adapters.inject(copy.deepcopy(vit_b), "lora_qkv"), not_head) == 12 * 128 * (
        3 * (768 + 768) + (768 + 768) + (768 + 3072) + (3072 + 768)
    )


def test_scaled_down_defaults_fit_small_widths(tiny_vit):
    model = adapters.inject(tiny_vit(), "arc")  # embed_dim 32
    assert model.arc_shared.U_att.shape == (32, arc.default_rank(32)) == (32, 16)
    model = adapters.inject(tiny_vit(), "consolidator")
    assert model.blocks[0].attn.qkv.branches[0].groups == consolidator.default_groups(32)[0] == 16


@pytest.mark.parametrize("method", [*MERGEABLE, "adapter"])
def test_every_adapter_parameter_learns_and_the_backbone_stays(tiny_vit, glyph_data, method):
    model = adapters.inject(tiny_vit(), method).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    x, y = to_tensor(glyph_data.images[:16]), torch.from_numpy(glyph_data.labels[:16])
    for _ in range(3):  # zero-initialised factors (LoRA B, ARC s_att) unlock the rest later
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        assert all(p.grad is not None for p in trainable)
        opt.step()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[n]), f"{method}: {n} did not move"
        else:
            assert torch.equal(p, before[n]), f"{method}: frozen {n} moved"
    # the official ARC script's trap: adapters frozen, only the head trains
    assert any(not n.startswith("head.") for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("method", MERGEABLE)
def test_compact_state_reloads_to_the_same_merged_model(tiny_vit, method):
    backbone = tiny_vit()
    fresh = copy.deepcopy(backbone)
    model = adapters.inject(backbone, method).eval()
    _perturb(model, 0.05)
    state = adapters.trainable_state(model)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert sum(v.numel() for v in state.values()) < frozen
    again = adapters.inject(fresh, method).eval()
    adapters.load_trainable(again, state)
    a, b = adapters.merge(model).state_dict(), adapters.merge(again).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_consolidator_shuffle_and_several_branches_merge_exactly(tiny_vit):
    model = adapters.inject(
        tiny_vit(), "consolidator", groups=[16, 4], shuffle=True, drop_path=0.5
    ).eval()
    _perturb(model, 0.05)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert (adapters.merge(model)(x) - model(x)).abs().max() <= 1e-5
    perm = consolidator.shuffle_perm(6, 2)
    assert perm.tolist() == [0, 3, 1, 4, 2, 5]


def test_consolidator_drop_path_drops_whole_branches_per_sample():
    branch = consolidator.GroupedBranch(8, 8, 2, shuffle=False, drop=0.5).train()
    torch.manual_seed(0)
    y = branch(torch.randn(64, 5, 8))
    dropped = (y == 0).all(dim=(1, 2))
    assert 10 < dropped.sum() < 54  # about half the samples lose the whole branch
    with torch.no_grad():
        full = branch.eval()(torch.ones(1, 5, 8))
    assert (full != 0).all()


def test_arc_starts_as_identity_at_attention(tiny_vit):
    base = tiny_vit().eval()
    x = torch.randn(2, 3, 16, 16)
    ref = base(x)
    model = adapters.inject(copy.deepcopy(base), "arc_att").eval()
    torch.testing.assert_close(model(x), ref)


def test_bottleneck_adapter_is_refused_by_merge_and_has_both_placements(tiny_vit):
    model = adapters.inject(tiny_vit(), "adapter")
    with pytest.raises(PipelineError, match=r"'adapter' is not mergeable: export it unmerged"):
        adapters.merge(model)
    base = tiny_vit().eval()
    parallel = adapters.inject(copy.deepcopy(base), "adapter", placement="parallel", width=8)
    assert parallel.blocks[0].adapter.down.out_features == 8
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for block in parallel.blocks:  # a silent adapter leaves timm's block as it was
            block.adapter.up.weight.zero_()
            block.adapter.up.bias.zero_()
        torch.testing.assert_close(parallel.eval()(x), base(x))
        parallel.blocks[0].adapter.down.weight.normal_()  # the official init is close to silent
        parallel.blocks[0].adapter.up.weight.normal_()
        assert (parallel(x) - base(x)).abs().max() > 1e-3
    with pytest.raises(PipelineError, match=r"placement must be sequential or parallel"):
        adapters.inject(tiny_vit(), "adapter", placement="diagonal")


def test_bottleneck_adapter_starts_as_the_official_one(vit_b):
    """Truncated normal (std 0.02) weights and zero biases, as iDAT's `_init_weights`: a fresh
    adapter barely moves ViT-B's logits (torch's default Linear init moved them by ~1.5)."""
    torch.manual_seed(0)
    model = adapters.inject(copy.deepcopy(vit_b), "adapter").eval()
    weights = torch.cat([b.adapter.down.weight.flatten() for b in model.blocks])
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)
    for block in model.blocks:
        assert not block.adapter.down.bias.any() and not block.adapter.up.bias.any()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        moved = (model(x) - vit_b(x)).abs().max().item()
    assert 0 < moved < 0.3


def test_bad_options_are_clear(tiny_vit):
    with pytest.raises(PipelineError, match=r"do not divide"):
        adapters.inject(tiny_vit(), "consolidator", groups=[5])
    with pytest.raises(PipelineError, match=r"positions must be among"):
        adapters.inject(tiny_vit(), "arc", positions=["ffn"])
    with pytest.raises(PipelineError, match=r"parts must be among q, k, v"):
        adapters.inject(tiny_vit(), "lora_qkv", parts=["x"])
