"""Per-epoch training checkpoints (safetensors + JSON), written whole or not at all, and the
lock that keeps a second copy of a run from training into the same checkpoint."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from pipeline import PipelineError
from pipeline.io import atomic_dir, read_tensors
from pipeline.train import distributed


def save(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any]
) -> None:
    """Trainable weights, AdamW moments and RNG state as tensors; everything else as JSON."""
    tensors = {f"model.{k}": p.detach() for k, p in model.named_parameters() if p.requires_grad}
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for k, v in state.items():
            tensors[f"optim.{pid}.{k}"] = torch.as_tensor(v)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    with atomic_dir(folder) as tmp:
        save_file(
            {k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp / "last.safetensors")
        )
        (tmp / "last.json").write_text(json.dumps({**meta, "param_groups": opt["param_groups"]}))


def load(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, fingerprint: str
) -> dict[str, Any] | None:
    """Restore a checkpoint made for the same run (same fingerprint); None if there is none.

    A damaged checkpoint (a copy cut short, a full disk) is set aside, not deleted, and the run
    starts over: left in place it would stop every later run of the stage."""
    if not (folder / "last.json").is_file():
        return None
    try:
        meta = json.loads((folder / "last.json").read_text())
        if not isinstance(meta, dict) or not {"epoch", "history", "param_groups"} <= meta.keys():
            raise ValueError("last.json lacks the epoch, history or optimiser groups")
        if meta.get("fingerprint") != fingerprint:
            return None  # a different run's state: never resume from it
        tensors = _tensors(folder, model)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        # first: it checks the groups before it changes anything; what follows cannot fail
        optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    except (PipelineError, ValueError, KeyError) as e:
        if distributed.is_main():  # the one process that writes the checkpoint moves it
            aside = folder.with_name(f"{folder.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            folder.rename(aside)
            tqdm.write(
                f"{folder}: damaged checkpoint set aside as {aside}, training from scratch: {e}",
                file=sys.stderr,
            )
        return None
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in tensors.items():
            if k.startswith("model."):
                params[k[len("model.") :]].copy_(v)
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta


def _tensors(folder: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors, checked to hold every weight of `model` it trains and the RNG
    state (so that loading them cannot fail half-way)."""
    tensors = read_tensors(folder / "last.safetensors")
    want = {f"model.{k}": p.shape for k, p in model.named_parameters() if p.requires_grad}
    have = {k: v.shape for k, v in tensors.items() if k.startswith("model.")}
    rng = tensors.get("rng.cpu")
    if have != want or rng is None or rng.shape != torch.get_rng_state().shape:
        raise ValueError("last.safetensors does not hold this model's weights and RNG state")
    return tensors


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the run's lock (a file beside its checkpoint folder, which each save replaces
    whole) while the block runs; refuse if another live process holds it. Two copies of a run
    (an orphan of a killed dvc, a second dvc repro) would write over each other's checkpoint
    and curves. The kernel drops the lock when its holder dies, however it dies."""
    lock = folder.with_name(f"{folder.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise PipelineError(
                f"{folder}: another training run (pid {holder}) is using this checkpoint "
                "folder; stop it or wait for it to finish"
            ) from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def clear(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
