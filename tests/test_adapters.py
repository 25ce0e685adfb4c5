import copy

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from pipeline import PipelineError, adapters
from pipeline.adapters.lora import LoRALinear
from tests.conftest import TINY, images


def _randomize_adapters(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.05)


def test_registry_lists_methods():
    assert {"lora", "linear"} <= set(adapters.METHODS)
    assert adapters.is_mergeable("lora")


def test_inject_freezes_backbone_and_trains_adapters_and_head(tiny_vit):
    model = adapters.inject(tiny_vit(), "lora", rank=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trains"
    assert all("lora_" in n or n.startswith("head.") for n in trainable)
    assert {"head.weight", "head.bias", "blocks.0.attn.qkv.lora_A"} <= trainable
    # LoRA on qkv, proj, fc1, fc2 of each block: r * (in + out) each
    d, depth, r = TINY["embed_dim"], TINY["depth"], 4
    per_block = r * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))
    head = d * 4 + 4
    assert adapters.param_counts(model)["params_trainable"] == depth * per_block + head


def test_linear_probe_trains_head_only(tiny_vit):
    model = adapters.inject(tiny_vit(), "linear")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "head.weight",
        "head.bias",
    }


def test_inject_rejects_unknown_method_and_options(tiny_vit):
    with pytest.raises(PipelineError, match="unknown adapter method 'dora'"):
        adapters.inject(tiny_vit(), "dora")
    with pytest.raises(PipelineError, match=r"adapters.lora: unknown option\(s\) \['rnak'\]"):
        adapters.inject(tiny_vit(), "lora", rnak=4)
    with pytest.raises(PipelineError, match="unknown target module"):
        adapters.inject(tiny_vit(), "lora", targets=["q_proj"])
    with pytest.raises(PipelineError, match="rank must be >= 1"):
        adapters.inject(tiny_vit(), "lora", rank=0)


def test_fresh_lora_is_the_identity(tiny_vit):
    base = tiny_vit().eval()
    x = images(3)
    ref = base(x)
    model = adapters.inject(base, "lora").eval()
    torch.testing.assert_close(model(x), ref)


def test_merge_is_exact_on_vit_small_and_plain_timm():
    kwargs = {"img_size": 64, "patch_size": 16}
    model = timm.create_model("vit_small_patch16_224", num_classes=10, **kwargs)
    model = adapters.inject(model, "lora", rank=8, alpha=16).eval()
    _randomize_adapters(model)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        merged = adapters.merge(model)
        diff = (merged(x) - ref).abs().max().item()
    assert diff <= 1e-4
    assert ref.abs().max() > 0.1, "adapters should change the output for the test to mean much"
    assert type(merged) is VisionTransformer
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    plain = timm.create_model("vit_small_patch16_224", num_classes=10, **kwargs)
    plain.load_state_dict(merged.state_dict(), strict=True)
    # the input model is left as it was
    assert any(isinstance(m, LoRALinear) for m in model.modules())


def test_merge_refuses_models_without_adapters_and_non_finite(tiny_vit):
    with pytest.raises(PipelineError, match="model has no adapters"):
        adapters.merge(tiny_vit())
    model = adapters.inject(tiny_vit(), "lora")
    with torch.no_grad():
        model.blocks[0].attn.qkv.lora_B.fill_(float("inf"))
    with pytest.raises(PipelineError, match="non-finite weights"):
        adapters.merge(model)


def test_adapters_get_gradients_and_move_backbone_does_not(tiny_vit, glyph_data):
    model = adapters.inject(tiny_vit(), "lora", rank=2)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    tuned = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    from pipeline.data import to_tensor

    x, y = to_tensor(glyph_data.images[:16]), torch.from_numpy(glyph_data.labels[:16])
    for _ in range(2):  # B starts at zero, so A's gradient appears from the second step
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for n, p in model.named_parameters():
        if n in tuned:
            assert not torch.equal(p, tuned[n]), f"{n} did not move"
        else:
            assert torch.equal(p, frozen[n]), f"frozen {n} moved"


def test_compact_state_roundtrip(tiny_vit):
    backbone = tiny_vit()
    fresh = copy.deepcopy(backbone)
    model = adapters.inject(backbone, "lora").eval()
    _randomize_adapters(model)
    state = adapters.trainable_state(model)
    assert all("lora_" in k or k.startswith("head.") for k in state)
    fresh = adapters.inject(fresh, "lora").eval()
    adapters.load_trainable(fresh, state)
    x = images(2)
    torch.testing.assert_close(fresh(x), model(x))
    with pytest.raises(PipelineError, match="adapter file does not fit"):
        adapters.load_trainable(fresh, {"head.weight": state["head.weight"]})
