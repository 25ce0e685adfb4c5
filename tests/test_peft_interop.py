"""A LoRA adapter saved by PEFT merges here exactly as PEFT's own merge_and_unload does."""

import copy
import json

import peft
import pytest
import timm
import torch

from pipeline import PipelineError, adapters

KW = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}


@pytest.mark.parametrize("rslora", [False, True])
def test_merge_matches_peft_merge_and_unload(tmp_path, rslora):
    torch.manual_seed(0)
    base = timm.create_model("vit_tiny_patch16_224", num_classes=5, **KW).eval()
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["qkv", "proj", "fc1", "fc2"],
        modules_to_save=["head"],
        use_rslora=rslora,
    )
    peft_model = peft.get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():  # trained-looking adapters and head
        for name, p in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    reference = peft_model.merge_and_unload().state_dict()

    merged = adapters.merge_peft_lora(base, tmp_path / "adapter")
    ours = merged.state_dict()
    assert ours.keys() == reference.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], reference[k], rtol=0, atol=1e-6, msg=k)
    # "proj" also matched the patch embedding's conv: that delta was merged too
    assert not torch.equal(
        ours["patch_embed.proj.weight"], base.state_dict()["patch_embed.proj.weight"]
    )
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=5, **KW)
    plain.load_state_dict(ours, strict=True)


def test_bad_adapter_folders(tmp_path):
    base = timm.create_model("vit_tiny_patch16_224", num_classes=5, **KW)
    with pytest.raises(PipelineError, match=r"expected adapter_config.json"):
        adapters.merge_peft_lora(base, tmp_path)
    peft_model = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=2, target_modules=["qkv"], use_dora=True)
    )
    peft_model.save_pretrained(tmp_path / "dora")
    with pytest.raises(PipelineError, match=r"DoRA adapters cannot be merged"):
        adapters.merge_peft_lora(base, tmp_path / "dora")
    other = timm.create_model("vit_tiny_patch16_224", num_classes=5, **{**KW, "depth": 3})
    peft.get_peft_model(other, peft.LoraConfig(r=2, target_modules=["qkv"])).save_pretrained(
        tmp_path / "deeper"
    )
    with pytest.raises(PipelineError, match=r"targets 'blocks.2.attn.qkv', which the model lacks"):
        adapters.merge_peft_lora(base, tmp_path / "deeper")
    cfg = json.loads((tmp_path / "deeper" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA"
