import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from pipeline import PipelineError, models
from tests.conftest import TINY, images


def test_unknown_arch_and_bad_kwargs():
    with pytest.raises(PipelineError, match=r"unknown timm ViT architecture 'vit_nope'"):
        models.create("vit_nope", {}, 2)
    with pytest.raises(PipelineError, match=r"unknown timm ViT architecture 'resnet18'"):
        models.create("resnet18", {}, 2)
    with pytest.raises(PipelineError, match=r"do not fit vit_tiny_patch16_224"):
        models.create("vit_tiny_patch16_224", {**TINY, "wings": 2}, 2)


def test_save_load_roundtrip_and_new_head(tmp_path, tiny_vit):
    model = tiny_vit(num_classes=3).eval()
    models.save_model(tmp_path / "m", model, "vit_tiny_patch16_224", TINY, 3)
    back = models.load_model(tmp_path / "m").eval()
    x = images(4)
    torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
    # plain timm can rebuild it without this project
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=3, **TINY)
    plain.load_state_dict(back.state_dict(), strict=True)
    # a new head for another task: the body is kept
    other = models.load_model(tmp_path / "m", num_classes=7).eval()
    assert other.head.out_features == 7
    torch.testing.assert_close(other.forward_features(x), model.forward_features(x))
    with pytest.raises(PipelineError, match=r"no saved model"):
        models.load_model(tmp_path / "absent")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".npz"])
def test_load_local_checkpoint(tmp_path, tiny_vit, suffix):
    src = tiny_vit(num_classes=5)
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    elif suffix == ".pth":
        torch.save({"state_dict": state}, path)
    else:
        np.savez(path, **{k: v.numpy() for k, v in state.items()})
    dst = tiny_vit(num_classes=0)
    models.load_weights(dst, str(path), "vit_tiny_patch16_224", TINY)
    x = images(2)
    torch.testing.assert_close(
        dst.eval()(x), src.eval().forward_head(src.forward_features(x), pre_logits=True)
    )


def test_checkpoint_errors(tmp_path, tiny_vit):
    model = tiny_vit(num_classes=0)
    with pytest.raises(PipelineError, match=r"checkpoint file '.*missing.safetensors' not found"):
        models.load_weights(
            model, str(tmp_path / "missing.safetensors"), "vit_tiny_patch16_224", TINY
        )
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(PipelineError, match=r"unsupported checkpoint type"):
        models.load_weights(model, str(tmp_path / "w.onnx"), "vit_tiny_patch16_224", TINY)


@pytest.mark.parametrize("kwargs", [{}, {"img_size": 32}])
def test_unreachable_hub_is_one_clear_line(kwargs):
    """Offline, a timm pretrained tag fails fast with the file the user must provide; another
    img_size changes no width, so that file still fits."""
    code = (
        "from pipeline import models\n"
        "from pipeline.cli import run_stage\n"
        "def main(argv):\n"
        f"    m = models.create('vit_tiny_patch16_224.augreg_in21k', {kwargs}, 0)\n"
        f"    models.load_weights(m, 'timm', 'vit_tiny_patch16_224.augreg_in21k', {kwargs},\n"
        "                        key='backbone.student.weights')\n"
        "run_stage(main)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: backbone.student.weights: cannot fetch pretrained weights")
    assert "model.safetensors of 'timm/vit_tiny_patch16_224.augreg_in21k'" in lines[0]


def _save(model: torch.nn.Module, path) -> str:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def _refusal(model, weights: str, kwargs: dict, arch: str = "vit_tiny_patch16_224") -> str:
    with pytest.raises(PipelineError) as e:
        models.load_weights(model, weights, arch, kwargs, key="backbone.teacher.weights")
    assert "\n" not in str(e.value)  # a stage prints it as one `error: ...` line
    return str(e.value)


def test_checkpoint_of_another_width_names_shapes_and_fitting_kwargs(tmp_path, tiny_vit):
    # wider, deeper, at another image size, with its own head: only the widths misfit
    other = tiny_vit(num_classes=5, embed_dim=48, depth=3, num_heads=3, img_size=32)
    path = _save(other, tmp_path / "wide.safetensors")
    assert _refusal(tiny_vit(num_classes=0), path, TINY) == (
        f"backbone.teacher.weights: checkpoint '{path}' does not fit vit_tiny_patch16_224 with "
        "backbone.teacher.kwargs: cls_token: checkpoint (1, 1, 48) vs model (1, 1, 32), "
        "pos_embed: checkpoint (1, 17, 48) vs model (1, 5, 32), "
        "patch_embed.proj.weight: checkpoint (48, 3, 8, 8) vs model (32, 3, 8, 8) and 27 more; "
        "unexpected blocks.2.attn.proj.bias, blocks.2.attn.proj.weight, blocks.2.attn.qkv.bias "
        "and 9 more; it fits backbone.teacher.kwargs "
        "{embed_dim: 48, depth: 3, num_heads: 1, patch_size: 8, mlp_ratio: 4.0} "
        "(num_heads is a guess: no tensor records it)"
    )


def test_checkpoint_of_another_depth_and_a_real_vit_tiny(tmp_path, tiny_vit):
    shallow = _save(tiny_vit(num_classes=0, depth=1), tmp_path / "shallow.safetensors")
    assert _refusal(tiny_vit(num_classes=0), shallow, TINY).endswith(
        "backbone.teacher.kwargs: missing blocks.1.norm1.weight, blocks.1.norm1.bias, "
        "blocks.1.attn.qkv.weight and 9 more; it fits backbone.teacher.kwargs "
        "{embed_dim: 32, depth: 1, num_heads: 1, patch_size: 8, mlp_ratio: 4.0} "
        "(num_heads is a guess: no tensor records it)"
    )
    # a real vit_tiny training checkpoint (224 px, 12 blocks, wrapped with its epoch): at the
    # arch's own width the suggested num_heads is the arch's (192 wide, 3 heads)
    path = tmp_path / "vit_tiny.pth"
    torch.save({"model": timm.create_model("vit_tiny_patch16_224").state_dict(), "epoch": 9}, path)
    msg = _refusal(tiny_vit(num_classes=0), str(path), TINY)
    assert msg.startswith(
        f"backbone.teacher.weights: checkpoint '{path}' does not fit vit_tiny_patch16_224 with "
        "backbone.teacher.kwargs: cls_token: checkpoint (1, 1, 192) vs model (1, 1, 32), "
        "pos_embed: checkpoint (1, 197, 192) vs model (1, 5, 32), "
        "patch_embed.proj.weight: checkpoint (192, 3, 16, 16) vs model (32, 3, 8, 8) and 27 more; "
        "unexpected blocks.2.attn.proj.bias, "
    )
    assert msg.endswith(
        "; it fits backbone.teacher.kwargs "
        "{embed_dim: 192, depth: 12, num_heads: 3, patch_size: 16, mlp_ratio: 4.0} "
        "(num_heads is a guess: no tensor records it)"
    )


def test_checkpoint_at_another_image_size_loads(tmp_path, tiny_vit):
    """timm's checkpoint_filter_fn resamples pos_embed to the model's grid: not a misfit."""
    src = tiny_vit(num_classes=5, img_size=32)
    dst = tiny_vit(num_classes=0)
    models.load_weights(dst, _save(src, tmp_path / "big.safetensors"), "vit_tiny_patch16_224", TINY)
    got, want = dst.state_dict(), src.state_dict()
    blocks = [k for k in want if k.startswith("blocks.")]
    assert blocks
    for k in [*blocks, "cls_token", "patch_embed.proj.weight", "norm.weight"]:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    assert got["pos_embed"].shape == (1, 5, 32)


def test_unloadable_files_are_one_line(tmp_path, tiny_vit):
    model = tiny_vit(num_classes=0)
    whole = tmp_path / "whole.pth"
    torch.save(tiny_vit(num_classes=0), whole)
    assert _refusal(model, str(whole), TINY) == (
        f"backbone.teacher.weights: '{whole}' holds a pickled object "
        "(timm.models.vision_transformer.VisionTransformer), not a state dict, and this project "
        "never unpickles code; save the weights with torch.save(model.state_dict(), path) "
        "or as .safetensors"
    )
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    assert _refusal(model, str(listed), TINY) == (
        f"backbone.teacher.weights: '{listed}' holds a Python list, not a state dict "
        "(a mapping of parameter names to tensors)"
    )
    mixed = tmp_path / "mixed.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 32), "epoch": 3}, mixed)
    assert _refusal(model, str(mixed), TINY) == (
        f"backbone.teacher.weights: '{mixed}' is not a state dict: its 'epoch' is a Python int, "
        "not a tensor"
    )
    good = tmp_path / "good.pth"
    torch.save(model.state_dict(), good)
    damaged = {
        "cut.pth": good.read_bytes()[:1000],
        "empty.pth": b"",
        "noise.safetensors": b"not safetensors",
        "noise.npz": b"not a zip",
    }
    for name, data in damaged.items():
        (tmp_path / name).write_bytes(data)
        suffix = name.rpartition(".")[2]
        assert _refusal(model, str(tmp_path / name), TINY).startswith(
            f"backbone.teacher.weights: '{tmp_path / name}' is not a readable .{suffix} "
            "checkpoint ("
        ), name
        assert _refusal(model, str(tmp_path / name), TINY).endswith(
            "); it is damaged, cut short or of another format"
        )


def test_timm_weights_refuse_kwargs_that_change_the_widths(tiny_vit):
    """Before any download: the arch's pretrained weights come at its own widths only."""
    assert _refusal(tiny_vit(num_classes=0), "timm", TINY) == (
        "backbone.teacher.weights: no pretrained weights of 'vit_tiny_patch16_224' fit "
        "backbone.teacher.kwargs (they give embed_dim 32, depth 2, num_heads 2, patch_size 8; "
        "the pretrained model has 192, 12, 3, 16); drop those from backbone.teacher.kwargs to "
        "use them, or set backbone.teacher.weights to pretrain or to a checkpoint of those widths"
    )
    # num_heads changes no tensor shape, yet the weights were not trained with it
    heads = models.create("vit_tiny_patch16_224", {"num_heads": 6}, 0)
    assert "(they give num_heads 6; the pretrained model has 3)" in _refusal(
        heads, "timm", {"num_heads": 6}
    )
