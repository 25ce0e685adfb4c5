"""The PyTorch inference paths: bf16, torch.compile, CUDA graphs (on a GPU), SDPA in training
and the written-out attention of the export graph, pinned host memory for CUDA copies."""

import numpy as np
import pytest
import torch

from pipeline import PipelineError, adapters
from pipeline.data import loader
from pipeline.export.fusable import fusable
from pipeline.runtime.pytorch import (
    CompiledTorchBackend,
    CudaGraphBackend,
    TorchBackend,
    batch_buckets,
    torch_backend,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SDPA = "aten::scaled_dot_product_attention"


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, 16, 16)).astype(np.float32)


def test_bf16_backend_runs_a_bfloat16_copy_close_to_float32(tiny_vit):
    model = tiny_vit(num_classes=5).eval()
    x = _images(6)
    ref = TorchBackend(model, device="cpu").run(x)
    half = TorchBackend(model, device="cpu", precision="bf16")
    out = half.run(x)
    assert out.dtype == np.float32 and out.shape == (6, 5)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched
    assert half.label == "torch-bf16"
    # bfloat16 keeps 8 bits of mantissa: agreement to a few percent of the logits' scale
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max() + 0.02
    assert np.abs(out - ref).max() > 0  # it really ran in bfloat16


def test_unknown_precision_is_refused(tiny_vit):
    with pytest.raises(PipelineError, match="precision must be one of fp32, bf16, got 'fp8'"):
        TorchBackend(tiny_vit(), device="cpu", precision="fp8")
    with pytest.raises(PipelineError, match="unknown PyTorch backend 'jit'"):
        torch_backend("jit", tiny_vit())


def test_compiled_backend_matches_eager_for_every_batch_size_without_recompiling(tiny_vit):
    from torch._dynamo.utils import counters

    model = tiny_vit(num_classes=3).eval()
    eager = TorchBackend(model, device="cpu")
    compiled = CompiledTorchBackend(model, device="cpu")  # compiles batch 2 (dynamic) and 1
    graphs = counters["stats"]["unique_graphs"]
    for n in (1, 3, 7, 16):
        x = _images(n, seed=n)
        np.testing.assert_allclose(compiled.run(x), eager.run(x), atol=1e-4)
    assert counters["stats"]["unique_graphs"] == graphs  # every size reused a warm graph


@pytest.mark.parametrize(
    ("largest", "buckets"),
    [(1, [1]), (2, [1, 2]), (48, [1, 2, 4, 8, 16, 32, 48]), (64, [1, 2, 4, 8, 16, 32, 64])],
)
def test_cuda_graph_buckets_are_powers_of_two_up_to_the_largest_batch(largest, buckets):
    assert batch_buckets(largest) == buckets


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_graph_backend_refuses_cleanly_without_a_gpu(tiny_vit):
    with pytest.raises(PipelineError, match="the cuda-graph backend needs a CUDA GPU"):
        CudaGraphBackend(tiny_vit())


@cuda
def test_cuda_graph_backend_matches_eager_for_padded_and_split_batches(tiny_vit):
    model = tiny_vit(num_classes=4).eval()
    eager = TorchBackend(model, device="cuda")
    graphs = CudaGraphBackend(model, max_batch_size=8)
    assert sorted(graphs.graphs) == [1, 2, 4, 8]
    for n in (1, 3, 8, 13):  # 3 pads to 4; 13 runs as 8 + 5 (padded to 8)
        x = _images(n, seed=n)
        np.testing.assert_allclose(graphs.run(x), eager.run(x), atol=1e-4)


@cuda
def test_bf16_compiled_backend_on_cuda_is_close_to_float32(tiny_vit):
    model = tiny_vit(num_classes=4).eval()
    x = _images(32)
    ref = TorchBackend(model, device="cuda").run(x)
    out = CompiledTorchBackend(model, device="cuda", precision="bf16").run(x)
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max() + 0.02


@pytest.mark.parametrize("method", ["lora", "arc_att", "consolidator", "ssf"])
def test_training_attention_runs_fused_sdpa(tiny_vit, method):
    model = adapters.inject(tiny_vit(), method).train()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(torch.randn(2, 3, 16, 16)).sum().backward()
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls.get(SDPA) == len(model.blocks)


def test_the_export_graph_writes_attention_out_for_the_onnx_optimiser(tiny_vit):
    rewritten, count = fusable(adapters.merge(adapters.inject(tiny_vit(), "lora")))
    assert count == 2
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        rewritten(torch.randn(2, 3, 16, 16))
    assert SDPA not in {e.key for e in prof.key_averages()}


def test_loader_pins_host_memory_exactly_when_batches_go_to_a_gpu(glyph_data):
    assert loader(glyph_data, 8).pin_memory == torch.cuda.is_available()
