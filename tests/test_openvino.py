"""OpenVINO on tiny real ViTs: the IR converted from the export, each precision against torch,
NNCF's INT8 with and without accuracy control, the Triton OpenVINO model, the CPU's peaks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from pipeline import PipelineError
from pipeline.data import to_tensor
from pipeline.export import export_onnx, triton
from pipeline.export.openvino import quantize_openvino, to_openvino
from pipeline.manifest import KINDS, Manifest
from pipeline.runtime import openvino
from pipeline.runtime.hardware import parse_cpuinfo, this_cpu
from pipeline.runtime.open import open_backend
from pipeline.runtime.parity import parity
from pipeline.runtime.pytorch import TorchBackend

pytestmark = pytest.mark.skipif(openvino.unavailable() is not None, reason="needs openvino")
no_bf16 = openvino.bf16_unavailable()


@pytest.fixture
def ir(tmp_path, trained_like) -> Path:
    onnx = export_onnx(trained_like, tmp_path / KINDS["onnxruntime"].file, image_size=16)
    return to_openvino(onnx, tmp_path / KINDS["openvino"].file)


def test_ir_has_a_dynamic_batch_and_matches_torch_in_fp32(ir, trained_like, glyph_data):
    assert ir.with_suffix(".bin").stat().st_size > 10_000, "the weights are beside the .xml"
    backend = open_backend("openvino", ir, threads=1)
    assert (backend.input_name, backend.output_name) == ("images", "logits")
    assert backend.input_shape == (3, 16, 16) and backend.num_classes == 5
    assert backend.inference_precision == "f32"
    x = to_tensor(glyph_data.images).numpy()
    ref = TorchBackend(trained_like, device="cpu").run(x)
    for n in (1, 5, len(x)):  # one compiled model, any batch size
        np.testing.assert_allclose(backend.run(x[:n]), ref[:n], rtol=0, atol=1e-4)


@pytest.mark.skipif(no_bf16 is not None, reason=str(no_bf16))
def test_bf16_keeps_the_top1_and_is_close(ir, trained_like, glyph_data):
    x = to_tensor(glyph_data.images).numpy()
    ref = TorchBackend(trained_like, device="cpu").run(x)
    backend = open_backend("openvino-bf16", ir, threads=1)
    assert backend.inference_precision == "bf16"
    stats = parity(ref, backend.run(x), glyph_data.labels)
    assert 0 < stats["max_abs_diff"] < 0.1, "bf16 rounds, a little"
    assert stats["top1_agreement"] >= 95


@pytest.mark.skipif(no_bf16 is None, reason="this CPU runs bf16")
def test_bf16_is_refused_with_the_reason_where_the_isa_lacks_it(ir):
    with pytest.raises(PipelineError, match="neither AMX-BF16 nor AVX512-BF16"):
        open_backend("openvino-bf16", ir)


def _int8_ops(xml: Path) -> int:
    import openvino as ov

    return sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(xml).get_ops())


def test_nncf_int8_is_quantized_and_accuracy_control_keeps_the_drop_within_the_bound(
    tmp_path, ir, trained_like, glyph_data
):
    x = to_tensor(glyph_data.images).numpy()
    ref = TorchBackend(trained_like, device="cpu").run(x)
    labels = ref.argmax(1)  # fp32 is 100 % right by construction: the drop is the disagreement
    plain = quantize_openvino(ir, tmp_path / "plain.int8.xml", x[:32], smooth_quant_alpha=-1)
    controlled = quantize_openvino(
        ir, tmp_path / "model.int8.xml", x[:32], validation=(x, labels), max_drop=0.02
    )
    for xml in (plain, controlled):
        assert xml.with_suffix(".bin").is_file() and _int8_ops(xml) > 0
        stats = parity(ref, open_backend("openvino-int8", xml, threads=1).run(x), labels)
        assert stats["max_abs_diff"] < 1.0
        assert stats["top1_agreement"] >= 80
    stats = parity(ref, open_backend("openvino-int8", controlled, threads=1).run(x), labels)
    assert stats["top1_agreement"] >= 98, "within the 2-point bound on the validation images"


def test_nncf_failure_names_the_model(tmp_path, ir):
    with pytest.raises(PipelineError, match=r"model\.xml: NNCF could not quantize it"):
        quantize_openvino(ir, tmp_path / "x.xml", np.zeros((2, 3, 9, 9), np.float32))


def test_triton_openvino_model_parses_as_a_model_config(tmp_path, ir):
    from tritonclient.grpc import model_config_pb2

    quantize_openvino(ir, ir.parent / KINDS["openvino-int8"].file, np.zeros((4, 3, 16, 16), "f4"))
    manifest = Manifest("vit-merged", "vit", True, ".", [3, 16, 16], 5, 32, list("abcde"),
                        [0.5] * 3, [0.5] * 3, folder=ir.parent)  # fmt: skip
    manifest.add("openvino-int8", {})
    folder = triton.add_model(tmp_path / "repo", manifest, "openvino-int8", 200)
    config = text_format.Parse(
        (folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.name == "vit-merged-openvino"
    assert config.backend == "openvino" and config.platform == ""
    assert config.parameters["PERFORMANCE_HINT"].string_value == "LATENCY"
    bf16 = "HINT_BF16" in config.parameters
    assert bf16 == (no_bf16 is None), "INT8's float remainder in bf16 where the CPU has it"
    assert [(t.name, list(t.dims)) for t in config.input] == [("images", [3, 16, 16])]
    assert config.max_batch_size == 32 and config.dynamic_batching.max_queue_delay_microseconds
    assert sorted(p.name for p in (folder / "1").iterdir()) == ["model.bin", "model.xml"]
    assert (folder / "1/model.bin").read_bytes() == ir.with_name("model.int8.bin").read_bytes()


SPR = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model name\t: Intel(R) Xeon(R) Platinum 8481C
cpu MHz\t\t: 2600.000
flags\t\t: fpu avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8 amx_tile

processor\t: 1
model name\t: ignored
"""
ZEN4 = SPR.replace("GenuineIntel", "AuthenticAMD").replace("family\t: 6", "family\t: 25")
ZEN4 = ZEN4.replace(" amx_bf16 amx_int8 amx_tile", "")


def test_peaks_follow_the_isa_cores_and_clock():
    spr = parse_cpuinfo(SPR)
    assert spr.model == "Intel(R) Xeon(R) Platinum 8481C" and spr.ghz == 2.6
    assert (spr.bf16, spr.int8, spr.vector_bits) == ("amx_bf16", "amx_int8", 512)
    peak = spr.peak_tflops(cores=2)
    # AMX: 1,024 bf16 / 2,048 int8 FLOP a cycle a core; fp32: two 512-bit FMA pipes
    assert peak["bf16"] == pytest.approx(2 * 2.6 * 1024 / 1e3)
    assert peak["int8"] == pytest.approx(2 * peak["bf16"])
    assert peak["fp32"] == pytest.approx(2 * 2.6 * 64 / 1e3)
    zen4 = parse_cpuinfo(ZEN4)  # AVX-512 on 256-bit halves; bf16 and VNNI dot products
    assert (zen4.bf16, zen4.int8, zen4.vector_bits) == ("avx512_bf16", "avx512_vnni", 256)
    assert zen4.flop_per_cycle() == {"fp32": 32, "bf16": 64, "int8": 128}
    old = parse_cpuinfo(SPR.replace(" avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8", ""))
    assert old.flop_per_cycle() == {"fp32": 32, "bf16": None, "int8": None}
    assert parse_cpuinfo("").peak_tflops(2) == {"fp32": None, "bf16": None, "int8": None}
    here = this_cpu().describe(cores=2)
    assert here["cores"] == 2 and set(here["peak_tflops"]) == {"fp32", "bf16", "int8"}
