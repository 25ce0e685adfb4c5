"""Entry-point plumbing shared by the stages: one-line errors, dying with the DVC that ran us."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

from pipeline import PipelineError

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> None:
    """Under DVC (it sets DVC_STAGE for every command it runs), have the kernel send SIGTERM
    here when the parent dies: a SIGKILLed dvc would leave its stage running as an orphan that
    goes on writing outputs and curves. The setting survives exec, so the torchrun that
    pipeline.launch becomes has it too (and stops its workers on SIGTERM); each worker sets its
    own. The stage must be DVC's own child, not its shell's: dvc.yaml's commands `exec`. A stage
    or server started by hand keeps the usual behaviour (nohup works)."""
    if sys.platform != "linux" or "DVC_STAGE" not in os.environ:
        return
    parent = os.getppid()
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the setting took hold
        os.kill(os.getpid(), signal.SIGTERM)


def run_stage(main: Callable[[list[str]], None]) -> None:
    """Run a stage's main; a PipelineError becomes one line on stderr and exit status 1."""
    die_with_parent()
    try:
        main(sys.argv[1:])
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
