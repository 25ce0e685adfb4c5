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
    other = models.create("vit_tiny_patch16_224", {**TINY, "embed_dim": 48}, 0)
    path = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises((PipelineError, RuntimeError), match=r"size mismatch|does not fit"):
        models.load_weights(model, str(path), "vit_tiny_patch16_224", TINY)
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(PipelineError, match=r"unsupported checkpoint type"):
        models.load_weights(model, str(tmp_path / "w.onnx"), "vit_tiny_patch16_224", TINY)


def test_unreachable_hub_is_one_clear_line():
    """Offline, a timm pretrained tag fails fast with the file the user must provide."""
    code = (
        "from pipeline import models\n"
        "from pipeline.cli import run_stage\n"
        "def main(argv):\n"
        "    m = models.create('vit_tiny_patch16_224.augreg_in21k', {}, 0)\n"
        "    models.load_weights(m, 'timm', 'vit_tiny_patch16_224.augreg_in21k', {},\n"
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
