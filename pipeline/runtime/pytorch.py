"""The PyTorch backends: eager, torch.compile (inductor) and CUDA graphs, fp32 or bf16."""

from __future__ import annotations

import copy
import threading

import numpy as np
import torch

from pipeline import PipelineError
from pipeline.manifest import INPUT_NAME, OUTPUT_NAME

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # base.PRECISIONS


class TorchBackend:
    """Eager PyTorch, on CUDA when present. `precision="bf16"` runs a bfloat16 copy of the
    model (inputs cast on the device, logits returned as float32); attention is timm's SDPA."""

    name = "torch"
    input_name, output_name = INPUT_NAME, OUTPUT_NAME

    def __init__(
        self, model: torch.nn.Module, device: str | None = None, precision: str = "fp32"
    ) -> None:
        if precision not in DTYPES:
            raise PipelineError(f"precision must be one of {', '.join(DTYPES)}, got {precision!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.on_gpu = self.device.type == "cuda"
        self.dtype = DTYPES[precision]
        self.label = self.name if precision == "fp32" else f"{self.name}-{precision}"
        if self.dtype != torch.float32:  # a copy: the caller's float32 model stays as it is
            model = copy.deepcopy(model).to(self.dtype)
        self.model = model.eval().to(self.device)
        embed = model.patch_embed  # a timm ViT; an adapter may wrap its conv
        conv = next(m for m in embed.modules() if isinstance(m, torch.nn.Conv2d))
        self.input_shape = (conv.in_channels, *embed.img_size)
        self.num_classes = model.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch already on the device in the backend's dtype."""
        return self.model(x)

    @torch.inference_mode()
    def run(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        x = x.to(self.device, non_blocking=True).to(self.dtype)
        return self.forward(x).float().cpu().numpy()


class CompiledTorchBackend(TorchBackend):
    """The model through torch.compile (inductor: fused kernels, no Python per op).

    `dynamic=True` (serving) compiles once for any batch size: the batch axis is marked dynamic
    and batches of 1 and 2 are run at start, so no request waits for a compile. `dynamic=False`
    (benchmarks at fixed sizes) specialises a graph to each batch size it meets.

    `freezing` (inference only) folds the weights into the graph as constants, so inductor can
    prepack them for oneDNN's matmul and convolution kernels on the CPU."""

    name = "torch-compile"

    def __init__(
        self,
        model: torch.nn.Module,
        device: str | None = None,
        precision: str = "fp32",
        dynamic: bool = True,
        freezing: bool = False,
    ) -> None:
        super().__init__(model, device, precision)
        self.dynamic = dynamic
        self.compiled = torch.compile(
            self.model, dynamic=None if dynamic else False, options={"freezing": freezing}
        )
        if dynamic:
            for size in (2, 1):  # batch 1 gets its own graph: compilers specialise size 1
                self.run(np.zeros((size, *self.input_shape), np.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic and len(x) > 1:
            torch._dynamo.mark_dynamic(x, 0)
        return self.compiled(x)


def batch_buckets(max_batch_size: int) -> list[int]:
    """The batch sizes CUDA graphs are captured for: powers of two, then the maximum."""
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i < max_batch_size]
    return [*sizes, max_batch_size]


class CudaGraphBackend(TorchBackend):
    """The eager model replayed from CUDA graphs, one captured per batch bucket (see
    `batch_buckets`): a batch is padded up to its bucket, so one launch runs the whole forward
    and the CPU cost per kernel launch is gone. CUDA only."""

    name = "cuda-graph"

    def __init__(
        self,
        model: torch.nn.Module,
        device: str | None = None,
        precision: str = "fp32",
        max_batch_size: int = 64,
    ) -> None:
        if not torch.cuda.is_available():
            raise PipelineError(
                "the cuda-graph backend needs a CUDA GPU (torch.cuda.is_available() is False); "
                "use torch or torch-compile here"
            )
        super().__init__(model, device or "cuda", precision)
        self.max_batch_size = max_batch_size
        self.buckets = batch_buckets(max_batch_size)
        self.pool = torch.cuda.graph_pool_handle()  # the graphs share one memory pool
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.lock = threading.Lock()  # the graphs' input and output tensors are shared state
        with torch.inference_mode():
            for size in reversed(self.buckets):  # the largest first: the pool fits them all
                self.graphs[size] = self._capture(size)

    def _capture(self, size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        static_in = torch.zeros(size, *self.input_shape, device=self.device, dtype=self.dtype)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the graph: cuBLAS handles, lazy inits
            for _ in range(3):
                self.model(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self.model(static_in)
        return graph, static_in, static_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = x.split(self.max_batch_size)
        if len(chunks) > 1:
            return torch.cat([self.forward(chunk) for chunk in chunks])
        n = len(x)
        graph, static_in, static_out = self.graphs[next(b for b in self.buckets if b >= n)]
        with self.lock:
            static_in[:n].copy_(x)
            graph.replay()
            return static_out[:n].clone()


def torch_backend(
    kind: str,
    model: torch.nn.Module,
    precision: str = "fp32",
    max_batch_size: int = 64,
    device: str | None = None,
) -> TorchBackend:
    """The PyTorch backend `kind` (torch, torch-compile or cuda-graph) for a model."""
    if kind == "torch":
        return TorchBackend(model, device, precision)
    if kind == "torch-compile":
        return CompiledTorchBackend(model, device, precision)
    if kind == "cuda-graph":
        return CudaGraphBackend(model, device, precision, max_batch_size)
    raise PipelineError(f"unknown PyTorch backend {kind!r} (torch, torch-compile, cuda-graph)")
