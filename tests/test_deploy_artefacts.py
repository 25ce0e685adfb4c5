"""Deployment artefacts on tiny real ViTs: the fusable rewrite, ONNX Runtime's fusions, FP16,
INT8 (dynamic and static), external data, the Triton repository and the TensorRT paths."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format

from pipeline import PipelineError, adapters
from pipeline.bench import ort_profile
from pipeline.export import export_onnx, files, tensorrt, triton
from pipeline.export.fusable import FusableAttention, FusableBlock, fusable
from pipeline.export.optimize import optimize_vit
from pipeline.export.quantize import quantize_int8_dynamic, quantize_int8_static, to_fp16
from serve.backends import OnnxRuntimeBackend, TensorRTBackend, TorchBackend, open_backend
from tests.conftest import images

gpu = pytest.mark.skipif(tensorrt.unavailable() is not None, reason="needs TensorRT and CUDA")


def _ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture
def trained_like(tiny_vit):
    """A tiny ViT whose every weight is perturbed, like a trained one (no shared constants)."""
    model = tiny_vit(num_classes=5, depth=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture
def exported(tmp_path, trained_like):
    model, rewritten = fusable(trained_like)
    assert rewritten == 3
    return export_onnx(model, tmp_path / files.ONNX, image_size=16)


def test_fusable_rewrite_is_the_same_function(trained_like):
    model, rewritten = fusable(trained_like)
    assert rewritten == 3 and all(isinstance(b, FusableBlock) for b in model.blocks)
    assert isinstance(model.blocks[0].attn, FusableAttention)
    assert type(trained_like.blocks[0].attn).__name__ == "Attention", "the original is untouched"
    x = images(4)
    torch.testing.assert_close(model(x), trained_like(x), rtol=0, atol=1e-5)


def test_fusable_leaves_adapter_wrapped_attention(tiny_vit):
    lora = adapters.inject(tiny_vit(), "lora", rank=2).eval()
    assert fusable(lora)[1] == 0


def test_optimiser_fuses_every_block_and_keeps_the_logits(tmp_path, exported, trained_like):
    counts = optimize_vit(exported, tmp_path / files.OPTIMIZED, num_heads=2, hidden_size=32)
    assert counts["Attention"] == 3 and counts["BiasGelu"] == 3
    assert counts["SkipLayerNormalization"] == 6  # both residuals of every block
    plain = optimize_vit(exported, tmp_path / "plain.onnx", 2, 32, skip_layer_norm=False)
    assert plain["SkipLayerNormalization"] == 0 and plain["LayerNormalization"] == 7
    x = images(6).numpy()
    ref = TorchBackend(trained_like, device="cpu").run(x)
    for path in (tmp_path / files.OPTIMIZED, tmp_path / "plain.onnx"):
        assert "Attention" in _ops(path)
        np.testing.assert_allclose(OnnxRuntimeBackend(path).run(x), ref, rtol=0, atol=1e-4)


def test_timm_layout_alone_does_not_fuse_attention(tmp_path, trained_like):
    """Why the rewrite exists: the same model exported as timm writes it fuses no attention."""
    path = export_onnx(trained_like, tmp_path / "timm.onnx", image_size=16)
    assert optimize_vit(path, tmp_path / "timm.opt.onnx", 2, 32)["Attention"] == 0


def test_fp16_and_int8_copies_are_close_to_fp32(tmp_path, exported):
    optimized = tmp_path / files.OPTIMIZED
    optimize_vit(exported, optimized, 2, 32, skip_layer_norm=False)
    x = images(32).numpy()
    ref = OnnxRuntimeBackend(exported).run(x)
    scale = np.abs(ref).max()

    fp16 = to_fp16(optimized, tmp_path / files.FP16)
    inputs = onnx.load(str(fp16)).graph.input[0].type.tensor_type.elem_type
    assert inputs == onnx.TensorProto.FLOAT, "callers keep feeding fp32"
    np.testing.assert_allclose(OnnxRuntimeBackend(fp16).run(x), ref, rtol=0, atol=2e-3 * scale)

    dynamic = quantize_int8_dynamic(optimized, tmp_path / files.INT8)
    assert {"QAttention", "MatMulInteger", "DynamicQuantizeLinear"} <= _ops(dynamic)
    assert "ConvInteger" not in _ops(dynamic), "the patch embedding stays fp32"
    static = quantize_int8_static(exported, tmp_path / files.INT8_STATIC, images(20).numpy(), 8)
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(static)
    for path in (dynamic, static):
        out = OnnxRuntimeBackend(path).run(x)
        assert np.abs(out - ref).max() < 0.1 * scale
        assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.8


def test_external_data_for_large_models(tmp_path, trained_like):
    path = export_onnx(trained_like, tmp_path / "big" / files.ONNX, 16, external_data_bytes=0)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    weights = sum(p.numel() * 4 for p in trained_like.parameters())
    assert (path.parent / "model.onnx.data").stat().st_size > weights / 2
    x = images(3).numpy()
    ref = TorchBackend(trained_like, device="cpu").run(x)
    np.testing.assert_allclose(OnnxRuntimeBackend(path).run(x), ref, rtol=0, atol=1e-4)
    repo = triton.add_model(tmp_path / "repo", "big", path, 16, 5, 8, 100)
    assert sorted(p.name for p in (repo / "1").iterdir()) == ["model.onnx", "model.onnx.data"]
    np.testing.assert_allclose(
        OnnxRuntimeBackend(repo / "1/model.onnx").run(x), ref, rtol=0, atol=1e-4
    )


def test_triton_repository_parses_as_a_model_config(tmp_path, exported):
    from tritonclient.grpc import model_config_pb2

    folder = triton.add_model(tmp_path / "repo", "vit-merged", exported, 16, 5, 64, 500)
    config = text_format.Parse(
        (folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.name == "vit-merged" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64
    assert [(t.name, list(t.dims)) for t in config.input] == [("images", [3, 16, 16])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("logits", [5])]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(config.dynamic_batching.preferred_batch_size) == [1, 8, 32, 64]
    assert (folder / "1/model.onnx").read_bytes() == exported.read_bytes()
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine")
    text = triton.add_model(tmp_path / "repo", "vit-trt", plan, 16, 5, 4, 0) / "config.pbtxt"
    config = text_format.Parse(text.read_text(), model_config_pb2.ModelConfig())
    assert config.platform == "tensorrt_plan" and list(
        config.dynamic_batching.preferred_batch_size
    ) == [1, 4]


def test_profile_names_where_the_time_goes(tmp_path, exported):
    profile = ort_profile(exported, images(2).numpy(), runs=3, threads=1, scratch=tmp_path)
    assert "MatMul" in profile and all(ms >= 0 for ms in profile.values())
    assert list(profile.values()) == sorted(profile.values(), reverse=True)


def test_open_backend_names_each_artefact(exported):
    assert open_backend("onnxruntime-int8", exported).name == "onnxruntime-int8"
    assert files.artefacts(exported.parent) == {"onnxruntime": exported}


@pytest.mark.skipif(tensorrt.unavailable() is None, reason="TensorRT and CUDA are present")
def test_tensorrt_says_why_it_is_skipped(tmp_path):
    reason = tensorrt.unavailable()
    assert reason in (
        "no CUDA GPU",
        "the tensorrt package is not installed (pip install '.[tensorrt]')",
    )
    with pytest.raises(PipelineError, match="TensorRT backend cannot run here"):
        TensorRTBackend(tmp_path / "model.plan")


@gpu
def test_tensorrt_engine_matches_onnxruntime(tmp_path, exported):
    optimized = tmp_path / files.OPTIMIZED
    optimize_vit(exported, optimized, 2, 32)
    fp16 = to_fp16(optimized, tmp_path / files.FP16)
    plan = tensorrt.build_engine(exported, tmp_path / files.PLAN, 16, 8, fp16_onnx_path=fp16)
    engine = TensorRTBackend(plan)
    for batch in (1, 5, 8):
        x = images(batch).numpy()
        ref = OnnxRuntimeBackend(exported).run(x)
        np.testing.assert_allclose(engine.run(x), ref, rtol=0, atol=2e-2 * np.abs(ref).max())
