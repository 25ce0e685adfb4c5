"""Data-parallel training over the processes torchrun starts (NCCL on GPUs, gloo on CPU).

Before the process group exists, rank and world size come from the environment torchrun sets,
so a stage can ask `is_main()` at any point.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if _initialised() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if _initialised() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """Whether this process writes: rank 0, or the only process."""
    return rank() == 0


def setup() -> None:
    """Join the process group torchrun describes in the environment; once per process."""
    if _initialised() or not all(k in os.environ for k in _TORCHRUN_ENV):
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo")
    atexit.register(_teardown)


def _teardown() -> None:
    if _initialised():
        dist.destroy_process_group()


def agree(value: Any) -> bool:
    """Whether `value` (any picklable) is the same on every rank."""
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return all(v == values[0] for v in values)


def broadcast_state(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank, as DDP does before training."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def reduce_gradients(params: list[nn.Parameter], count: int, loss_sum: float) -> tuple[float, int]:
    """Replace each rank's gradients by those of the mean loss over the global batch.

    A rank's loss is the mean over its `count` samples, so the global gradient is
    Σ count_r · grad_r / Σ count_r: exact also for the last, shorter batch, whose shares may
    differ by one or be empty. A parameter with no gradient on any rank keeps none, so AdamW
    skips it as it does in one process. One all-reduce carries the gradients, which parameters
    have one, the sample counts and the loss sums. Returns the global (loss sum, count).
    """
    device = params[0].device
    grads = [
        p.grad.flatten() * count if p.grad is not None else p.new_zeros(p.numel()) for p in params
    ]
    flags = [float(p.grad is not None) for p in params]
    tail = torch.tensor([*flags, count, loss_sum], dtype=grads[0].dtype, device=device)
    flat = torch.cat([*grads, tail])
    dist.all_reduce(flat)
    *chunks, present, totals = flat.split([p.numel() for p in params] + [len(params), 2])
    total, loss_total = totals.tolist()
    for p, grad, has in zip(params, chunks, present.tolist()):
        p.grad = grad.view_as(p).div_(total) if has else None
    return loss_total, round(total)
