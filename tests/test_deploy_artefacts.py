"""Deployment artefacts on tiny real ViTs: the fusable rewrite, ONNX Runtime's fusions, FP16,
INT8 (dynamic and static), external data, the Triton repository and the TensorRT paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format

from pipeline import PipelineError, adapters
from pipeline.export import export_onnx, tensorrt, triton
from pipeline.export.fusable import FusableAttention, FusableBlock, fusable
from pipeline.export.optimize import optimize_vit
from pipeline.export.quantize import quantize_int8_dynamic, quantize_int8_static, to_fp16
from pipeline.manifest import KINDS, Manifest
from pipeline.runtime.open import open_backend
from pipeline.runtime.ort import OnnxRuntimeBackend
from pipeline.runtime.profile import ort_profile
from pipeline.runtime.pytorch import TorchBackend
from pipeline.runtime.tensorrt import TensorRTBackend
from tests.conftest import images

gpu = pytest.mark.skipif(tensorrt.unavailable() is not None, reason="needs TensorRT and CUDA")


def _ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture
def exported(tmp_path, trained_like):
    model, rewritten = fusable(trained_like)
    assert rewritten == 3
    return export_onnx(model, tmp_path / KINDS["onnxruntime"].file, image_size=16)


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
    counts = optimize_vit(
        exported, tmp_path / KINDS["onnxruntime-optimized"].file, num_heads=2, hidden_size=32
    )
    assert counts["Attention"] == 3 and counts["BiasGelu"] == 3
    assert counts["SkipLayerNormalization"] == 6  # both residuals of every block
    plain = optimize_vit(exported, tmp_path / "plain.onnx", 2, 32, skip_layer_norm=False)
    assert plain["SkipLayerNormalization"] == 0 and plain["LayerNormalization"] == 7
    x = images(6).numpy()
    ref = TorchBackend(trained_like, device="cpu").run(x)
    for path in (tmp_path / KINDS["onnxruntime-optimized"].file, tmp_path / "plain.onnx"):
        assert "Attention" in _ops(path)
        np.testing.assert_allclose(OnnxRuntimeBackend(path).run(x), ref, rtol=0, atol=1e-4)


def test_timm_layout_alone_does_not_fuse_attention(tmp_path, trained_like):
    """Why the rewrite exists: the same model exported as timm writes it fuses no attention."""
    path = export_onnx(trained_like, tmp_path / "timm.onnx", image_size=16)
    assert optimize_vit(path, tmp_path / "timm.opt.onnx", 2, 32)["Attention"] == 0


def test_fp16_and_int8_copies_are_close_to_fp32(tmp_path, exported):
    optimized = tmp_path / KINDS["onnxruntime-optimized"].file
    optimize_vit(exported, optimized, 2, 32, skip_layer_norm=False)
    x = images(32).numpy()
    ref = OnnxRuntimeBackend(exported).run(x)
    scale = np.abs(ref).max()

    fp16 = to_fp16(optimized, tmp_path / KINDS["onnxruntime-fp16"].file)
    inputs = onnx.load(str(fp16)).graph.input[0].type.tensor_type.elem_type
    assert inputs == onnx.TensorProto.FLOAT, "callers keep feeding fp32"
    np.testing.assert_allclose(OnnxRuntimeBackend(fp16).run(x), ref, rtol=0, atol=2e-3 * scale)

    dynamic = quantize_int8_dynamic(optimized, tmp_path / KINDS["onnxruntime-int8"].file)
    assert {"QAttention", "MatMulInteger", "DynamicQuantizeLinear"} <= _ops(dynamic)
    assert "ConvInteger" not in _ops(dynamic), "the patch embedding stays fp32"
    static = quantize_int8_static(
        exported, tmp_path / KINDS["onnxruntime-int8-static"].file, images(20).numpy(), 8
    )
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(static)
    for path in (dynamic, static):
        out = OnnxRuntimeBackend(path).run(x)
        assert np.abs(out - ref).max() < 0.1 * scale
        assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.8


def test_external_data_for_large_models(tmp_path, trained_like):
    path = export_onnx(
        trained_like, tmp_path / "big" / KINDS["onnxruntime"].file, 16, external_data_bytes=0
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    weights = sum(p.numel() * 4 for p in trained_like.parameters())
    assert (path.parent / "model.onnx.data").stat().st_size > weights / 2
    x = images(3).numpy()
    ref = TorchBackend(trained_like, device="cpu").run(x)
    np.testing.assert_allclose(OnnxRuntimeBackend(path).run(x), ref, rtol=0, atol=1e-4)
    repo = triton.add_model(tmp_path / "repo", _manifest(path.parent, "big", 8), "onnxruntime", 100)
    assert sorted(p.name for p in (repo / "1").iterdir()) == ["model.onnx", "model.onnx.data"]
    np.testing.assert_allclose(
        OnnxRuntimeBackend(repo / "1/model.onnx").run(x), ref, rtol=0, atol=1e-4
    )


def _manifest(folder: Path, name: str, max_batch_size: int, *artefacts: str) -> Manifest:
    """The manifest of a 5-class 16 px model exported to `folder` with these artefacts."""
    manifest = Manifest(
        name=name,
        variant=name,
        shipped=True,
        torch=".",
        input_shape=[3, 16, 16],
        num_classes=5,
        max_batch_size=max_batch_size,
        classes=list("abcde"),
        mean=[0.5] * 3,
        std=[0.5] * 3,
        folder=folder,
    )
    for artefact in artefacts or ("onnxruntime",):
        manifest.add(artefact, {})
    return manifest


def test_triton_repository_parses_as_a_model_config(tmp_path, exported):
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    manifest = _manifest(exported.parent, "vit-merged", 64)
    folder = triton.add_model(tmp_path / "repo", manifest, "onnxruntime", 500)
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
    # one builder: its JSON form (the server's /config route) is the same configuration
    served = triton.model_config("vit-merged", "onnxruntime_onnx", [3, 16, 16], 5, 64, 500)
    assert json_format.ParseDict(served, model_config_pb2.ModelConfig()) == config
    with_source = triton.model_config(
        "m", "onnxruntime_onnx", [3, 16, 16], 5, 4, 0, "KIND_CPU", False, {"source": "a b"}
    )
    parsed = text_format.Parse(triton.to_pbtxt(with_source), model_config_pb2.ModelConfig())
    assert parsed == json_format.ParseDict(with_source, model_config_pb2.ModelConfig())
    assert (
        parsed.parameters["source"].string_value == "a b" and not parsed.dynamic_batching.ByteSize()
    )
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "model.plan").write_bytes(b"engine")
    engine = _manifest(tmp_path / "engine", "vit", 4, "tensorrt")
    text = triton.add_model(tmp_path / "repo", engine, "tensorrt", 0) / "config.pbtxt"
    config = text_format.Parse(text.read_text(), model_config_pb2.ModelConfig())
    assert config.name == "vit-tensorrt" and config.platform == "tensorrt_plan"
    assert list(config.dynamic_batching.preferred_batch_size) == [1, 4]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_profile_names_where_the_time_goes(tmp_path, exported):
    profile = ort_profile(exported, images(2).numpy(), runs=3, threads=1, scratch=tmp_path)
    assert "MatMul" in profile and all(ms >= 0 for ms in profile.values())
    assert list(profile.values()) == sorted(profile.values(), reverse=True)


def test_open_backend_names_each_artefact(exported):
    assert open_backend("onnxruntime-int8", exported).name == "onnxruntime-int8"
    assert _manifest(exported.parent, "vit", 8).timed() == {"onnxruntime": exported}


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
    optimized = tmp_path / KINDS["onnxruntime-optimized"].file
    optimize_vit(exported, optimized, 2, 32)
    fp16 = to_fp16(optimized, tmp_path / KINDS["onnxruntime-fp16"].file)
    plan = tensorrt.build_engine(
        exported, tmp_path / KINDS["tensorrt"].file, 16, 8, fp16_onnx_path=fp16
    )
    engine = TensorRTBackend(plan)
    for batch in (1, 5, 8):
        x = images(batch).numpy()
        ref = OnnxRuntimeBackend(exported).run(x)
        np.testing.assert_allclose(engine.run(x), ref, rtol=0, atol=2e-2 * np.abs(ref).max())
