"""The training loop: AdamW, warm-up + cosine, clipping, AMP on CUDA, checkpoint and resume.

Resuming is exact: the data order of each epoch is seeded by (seed, epoch) and the checkpoint
holds the RNG state, so a run killed after epoch k and resumed ends where an unbroken run ends.

Under torchrun every process runs `fit` on its share of each batch (see `distributed`). The
model is not wrapped in DistributedDataParallel: loss functions call sub-modules and helpers of
the model directly (iDAT's `pair.student`, WeCoLoRA's block outputs), which a wrapper's forward
hooks would miss. Instead, after each backward one all-reduce averages the gradients of the
trainable parameters (frozen ones have none to reduce), so N processes × B/N images follow the
one-process run at batch B up to the order of floating-point sums.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pipeline import PipelineError
from pipeline.config import TrainConfig
from pipeline.data import ImageSet, loader, reseed
from pipeline.train import checkpoint, distributed

if TYPE_CHECKING:  # imported where a run logs: dvclive is slow to import
    from dvclive import Live

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def seed_everything(seed: int) -> None:
    """Seed every generator a run draws from (model init, adapter init, dropout)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device() -> torch.device:
    """This process's GPU (`LOCAL_RANK` under torchrun), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", distributed.local_rank())
    return torch.device("cpu")


def lr_at(step: int, total: int, warmup: int, base: float, min_ratio: float = 0.0) -> float:
    """Linear warm-up from ~0 to `base`, then cosine down to `base * min_ratio`."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when `enabled` (train.amp); float32 elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def features_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a timm ViT's head sees: the pooled feature after the final norm."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


@torch.no_grad()
def predict(
    model: nn.Module,
    data: ImageSet,
    batch_size: int = 256,
    device: torch.device | None = None,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] = logits_of,
    desc: str | None = None,
) -> torch.Tensor:
    """`forward(model, images)` (logits by default; float32, on CPU) for every image, in order,
    in eval mode. `desc` shows a progress bar on a terminal (rank 0's under torchrun)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    batches = loader(data, batch_size)
    if desc is not None:
        shown = distributed.is_main() and sys.stderr.isatty()
        batches = tqdm(batches, desc=desc, leave=False, disable=not shown)
    out = [forward(model, x.to(device)).float().cpu() for x, _ in batches]
    model.train(was_training)
    return torch.cat(out)


def scores(logits: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, top-1 in percent) of logits against integer labels."""
    y = torch.from_numpy(labels)
    return F.cross_entropy(logits, y).item(), 100.0 * (logits.argmax(1) == y).double().mean().item()


def evaluate(model: nn.Module, data: ImageSet, batch_size: int = 256) -> tuple[float, float]:
    """(mean cross-entropy, top-1 in percent)."""
    return scores(predict(model, data, batch_size), data.labels)


@contextlib.contextmanager
def live_logger(live_dir: str | Path | None) -> Iterator[Live | None]:
    """dvclive's logger writing to `live_dir` on the main process; None elsewhere or without a
    folder. It ends (writing its summary) however the block ends; if the block raised, a failure
    to end the log is printed and the block's error raised."""
    if live_dir is None or not distributed.is_main():
        yield None
        return
    from dvclive import Live

    live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=None)
    try:
        yield live
    except BaseException:
        try:
            live.end()
        except Exception as e:  # the run's own error is the one to raise
            tqdm.write(f"the log in {live_dir} could not be ended: {e}")
        raise
    live.end()


def log_row(live: Live, row: dict[str, Any], step: bool = True) -> None:
    """A history row's numbers as dvclive metrics (`train_loss` as `train/loss`), its epoch
    aside; `step` plots them as one step of the curves, else they are the run's summary."""
    for name, value in row.items():
        if name != "epoch" and isinstance(value, numbers.Real) and not isinstance(value, bool):
            live.log_metric(name.replace("_", "/", 1), float(value), plot=step)
    if step:
        live.next_step()


def _fingerprint(
    model: nn.Module,
    cfg: TrainConfig,
    seed: int,
    sizes: tuple[int, int],
    extra: dict[str, Any] | None,
) -> str:
    shapes = [(k, list(p.shape)) for k, p in model.named_parameters() if p.requires_grad]
    blob = json.dumps([cfg.model_dump(), seed, shapes, sizes, extra], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _join(model: nn.Module, start: int, desc: str) -> None:
    """Every rank starts at the same epoch from rank 0's weights."""
    if not distributed.agree(start):
        raise PipelineError(
            f"{desc}: the processes found different checkpoints; "
            "the checkpoint folder must be one that every process reads"
        )
    distributed.broadcast_state(model)


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, desc: str = "train"
) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    """AdamW over the parameters that require grad, and those parameters. One parameter group
    per sub-model (iDAT's student and teacher), each clipped on its own."""
    groups = [
        [p for p in m.parameters() if p.requires_grad]
        for m in getattr(model, "param_group_modules", lambda: [model])()
    ]
    trainable = [p for g in groups for p in g]
    if not trainable:
        raise PipelineError(f"{desc}: the model has no trainable parameters")
    optimizer = torch.optim.AdamW(
        [{"params": g} for g in groups if g],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        betas=tuple(cfg.betas),
    )
    return optimizer, trainable


def train_step(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    trainable: list[nn.Parameter],
) -> tuple[float, int]:
    """One optimiser step on this rank's share of a batch; (loss sum, images) of the batch."""
    loss_sum, count = 0.0, len(y)
    optimizer.zero_grad(set_to_none=True)
    if count:  # a rank's share of a last batch shorter than the world can be empty
        with autocast(x.device, cfg.amp):
            loss = loss_fn(model, x, y)
        loss.backward()
        loss_sum = loss.item() * count
    if distributed.world_size() > 1:
        loss_sum, count = distributed.reduce_gradients(trainable, count, loss_sum)
    if cfg.grad_clip > 0:
        for group in optimizer.param_groups:
            torch.nn.utils.clip_grad_norm_(group["params"], cfg.grad_clip)
    optimizer.step()
    return loss_sum, count


def fit(
    model: nn.Module,
    train: ImageSet,
    val: ImageSet,
    cfg: TrainConfig,
    *,
    seed: int,
    checkpoint_dir: str | Path,
    live_dir: str | Path | None = None,
    desc: str = "train",
    loss_fn: LossFn = cross_entropy,
    fingerprint: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    evaluate_fn: Callable[[nn.Module], tuple[float, float | None]] | None = None,
) -> list[dict[str, float]]:
    """Train the parameters of `model` that require grad; return the per-epoch history.

    A checkpoint is written after every epoch to `checkpoint_dir` and removed when training
    completes; a later call for the same run resumes from it (a damaged one is set aside), and
    a second call on the same folder while this one runs is refused. `evaluate_fn(model)` gives
    the per-epoch (val loss, val top-1); by default cross-entropy and top-1 of the logits on `val`.
    A top-1 of None (a loss without labels) leaves `val_top1` out of the history and the logs.

    Under torchrun each process trains on its slice of every batch of `cfg.batch_size` (the
    global batch) and ends with the same weights; only rank 0 prints, logs and checkpoints.
    Every rank validates (the results are the same), so every rank returns the same history.
    """
    distributed.setup()
    world, rank, main = distributed.world_size(), distributed.rank(), distributed.is_main()
    if cfg.batch_size % world:
        raise PipelineError(
            f"{desc}: train.batch_size ({cfg.batch_size}) must be divisible by "
            f"the number of processes ({world})"
        )
    device = pick_device()
    model.to(device)
    optimizer, trainable = make_optimizer(model, cfg, desc)
    checkpoint_dir = Path(checkpoint_dir)
    key = _fingerprint(model, cfg, seed, (len(train), len(val)), fingerprint)

    with contextlib.ExitStack() as stack:
        if main:  # one process writes the checkpoint and holds the lock; the ranks share it
            stack.enter_context(checkpoint.locked(checkpoint_dir))
        torch.manual_seed(seed)
        meta = checkpoint.load(checkpoint_dir, model, optimizer, key)
        start, history = (meta["epoch"], meta["history"]) if meta else (0, [])
        if world > 1:
            _join(model, start, desc)
        if meta and main:
            tqdm.write(f"{desc}: resuming from the checkpoint of epoch {start}/{cfg.epochs}")

        live = stack.enter_context(live_logger(live_dir))
        if live:  # the stage's outputs were reset: log the epochs before a resume
            for row in history:
                log_row(live, row)

        data = loader(
            train,
            cfg.batch_size,
            shuffle=True,
            seed=seed,
            num_workers=cfg.num_workers,
            shard=(rank, world),
            shift=cfg.shift,
        )
        steps_per_epoch = len(data)
        total = cfg.epochs * steps_per_epoch
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
        # Under torchrun each rank draws its own dropout masks (one stream would repeat a mask on
        # every shard), seeded per epoch by (seed, epoch, rank) so that a resume stays exact without
        # every rank's RNG state; forked, so the stream after training is the same on every rank.
        streams = contextlib.nullcontext()
        if world > 1:
            streams = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        with streams:
            for epoch in range(start, cfg.epochs):
                reseed(data, seed * 100_003 + epoch)
                if world > 1:
                    torch.manual_seed((seed * 100_003 + epoch) * world + rank)
                model.train()
                running, seen = 0.0, 0
                bar = tqdm(
                    data,
                    desc=f"{desc} {epoch + 1}/{cfg.epochs}",
                    leave=False,
                    mininterval=1.0,
                    disable=not (main and sys.stderr.isatty()),
                )
                for i, (x, y) in enumerate(bar):
                    lr = lr_at(epoch * steps_per_epoch + i, total, warmup, cfg.lr, cfg.min_lr_ratio)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    loss_sum, count = train_step(model, loss_fn, x, y, optimizer, cfg, trainable)
                    running += loss_sum
                    seen += count
                    bar.set_postfix(loss=f"{running / seen:.4f}", lr=f"{lr:.2e}")
                val_loss, val_top1 = (evaluate_fn or (lambda m: evaluate(m, val)))(model)
                row = {"epoch": epoch + 1, "train_loss": running / seen, "val_loss": val_loss}
                if val_top1 is not None:
                    row["val_top1"] = val_top1
                row["lr"] = lr
                history.append(row)
                if main:
                    top1 = f" val top-1 {val_top1:.2f}%" if val_top1 is not None else ""
                    tqdm.write(
                        f"{desc} epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f} "
                        f"val loss {val_loss:.4f}{top1}"
                    )
                    if live:
                        log_row(live, row)
                    checkpoint.save(
                        checkpoint_dir,
                        model,
                        optimizer,
                        {"fingerprint": key, "epoch": epoch + 1, "history": history},
                    )
                if on_epoch_end:
                    on_epoch_end(epoch + 1)
        if main:
            checkpoint.clear(checkpoint_dir)
        return history
