import numpy as np
import onnx
import pytest
import torch

from pipeline import PipelineError, adapters
from pipeline.export import export_onnx
from pipeline.runtime import run_batched
from pipeline.runtime.ort import OnnxRuntimeBackend, ort_providers
from pipeline.runtime.pytorch import TorchBackend
from tests.conftest import images


@pytest.fixture
def lora_model(tiny_vit):
    model = adapters.inject(tiny_vit(num_classes=5), "lora", rank=2).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model


def test_onnx_export_has_dynamic_batch_and_matches_torch(tmp_path, lora_model):
    """Unmerged adapters export too (a top complaint with PEFT), with a dynamic batch."""
    path = export_onnx(lora_model, tmp_path / "m" / "model.onnx", image_size=16, opset=18)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == ["logits"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 16, 16]
    assert onnx.load(str(path)).opset_import[0].version >= 18
    ort = OnnxRuntimeBackend(path)
    torch_backend = TorchBackend(lora_model, device="cpu")
    for batch in (1, 3, 7):
        x = images(batch).numpy()
        np.testing.assert_allclose(ort.run(x), torch_backend.run(x), rtol=0, atol=1e-4)
    assert not list(tmp_path.glob("m/*.tmp")), "no temporary file is left behind"


def test_merged_and_unmerged_onnx_agree(tmp_path, lora_model):
    a = OnnxRuntimeBackend(export_onnx(lora_model, tmp_path / "a.onnx", 16))
    b = OnnxRuntimeBackend(export_onnx(adapters.merge(lora_model), tmp_path / "b.onnx", 16))
    x = images(9).numpy()
    np.testing.assert_allclose(run_batched(a, x, 4), run_batched(b, x, 4), rtol=0, atol=1e-4)


def test_backends_on_cpu_and_missing_model(tmp_path):
    assert ort_providers() == ["CPUExecutionProvider"] or torch.cuda.is_available()
    with pytest.raises(PipelineError, match="ONNX model not found"):
        OnnxRuntimeBackend(tmp_path / "none.onnx")


def test_run_batched_keeps_order(tiny_vit):
    backend = TorchBackend(tiny_vit(num_classes=3), device="cpu")
    x = images(10).numpy()
    np.testing.assert_allclose(run_batched(backend, x, 3), backend.run(x), rtol=0, atol=1e-5)
