"""`python -m pipeline.launch MODULE [ARGS...]`: a training stage on train.nproc processes.

With one process the module runs here, as `python -m MODULE ARGS...` would; with more, torchrun
starts them on this machine (one per GPU, or CPU processes joined over gloo), each running the
same module, and this process becomes torchrun.
"""

from __future__ import annotations

import os
import runpy
import sys

from pipeline import PipelineError
from pipeline.cli import run_stage
from pipeline.config import load_params


def torchrun_command(module: str, args: list[str], nproc: int) -> list[str]:
    """torchrun of this interpreter, on this machine alone."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        module,
        *args,
    ]


def _check_gpus(nproc: int) -> None:
    import torch

    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise PipelineError(
            f"train.nproc ({nproc}) exceeds the {torch.cuda.device_count()} GPUs of this machine"
        )


def main(argv: list[str]) -> None:
    if not argv:
        raise PipelineError("usage: python -m pipeline.launch MODULE [ARGS...]")
    module, *args = argv
    nproc = load_params().train.nproc
    if nproc == 1:
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    _check_gpus(nproc)
    command = torchrun_command(module, args, nproc)
    os.execv(command[0], command)


if __name__ == "__main__":
    run_stage(main)
