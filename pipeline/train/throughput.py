"""Training cost of a method: time per optimiser step, images/s and peak memory, measured on
the real training step (`train_step`: autocast, clipping, AdamW) with random weights.

Peak memory is the CUDA allocator's peak on a GPU. The CPU allocator keeps no such record, so
there the figure is accounted instead: weights + gradients + optimizer state + the tensors
autograd saves for backward (the activations), which together are what a step holds at its
peak, the end of the forward pass. The breakdown is reported on both devices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.config import TrainConfig
from pipeline.runtime.latency import measure
from pipeline.train.loop import LossFn, autocast, make_optimizer, pick_device, train_step

MIB = 1 << 20


@dataclass
class Workload:
    """A model ready to train (what requires grad is what trains) and its loss."""

    model: nn.Module
    loss_fn: LossFn


def _storage(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def saved_activation_bytes(model: nn.Module, forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves during `forward()` (distinct storages, the model's
    own parameters excluded: they are counted as weights). Runs one backward to free them."""
    params = {_storage(p)[0] for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr, size = _storage(t)
        if ptr not in params:
            saved[ptr] = size
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(saved.values())


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure_training(
    work: Workload,
    cfg: TrainConfig,
    batch_size: int,
    image_size: int,
    num_classes: int,
    warmup: int,
    steps: int,
    device: torch.device | str | None = None,
) -> dict[str, float | int | str]:
    """Step time (p50 and mean), images/s and memory of training `work` on random batches."""
    device = torch.device(device) if device else pick_device()
    model = work.model.to(device).train()
    optimizer, trainable = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(device)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)

    def forward() -> torch.Tensor:
        with autocast(device, cfg.amp):
            return work.loss_fn(model, x, y)

    activations = saved_activation_bytes(model, forward)
    cuda = device.type == "cuda"

    def step() -> None:
        train_step(model, work.loss_fn, x, y, optimizer, cfg, trainable)
        if cuda:
            torch.cuda.synchronize(device)  # the step's time, not its launch

    for _ in range(max(1, warmup)):  # the first step allocates the optimizer state
        step()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    stats = measure(step, batch_size, 0, steps)
    weights = _bytes(model.parameters())
    grads = _bytes(trainable)
    state = _bytes(
        v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)
    )
    accounted = weights + grads + state + activations
    peak = torch.cuda.max_memory_allocated(device) if cuda else accounted
    return {
        "step_p50_ms": stats["p50_ms"],
        "step_mean_ms": stats["mean_ms"],
        "images_per_s": stats["throughput"],
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in trainable),
        "peak_memory_mib": peak / MIB,
        "memory_source": "cuda allocator peak" if cuda else "accounted",
        "weights_mib": weights / MIB,
        "gradients_mib": grads / MIB,
        "optimizer_mib": state / MIB,
        "activations_mib": activations / MIB,
    }
