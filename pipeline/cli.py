"""Entry-point plumbing shared by the stages: one-line errors, quiet thread settings."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipeline import PipelineError


def run_stage(main: Callable[[list[str]], None]) -> None:
    """Run a stage's main; a PipelineError becomes one line on stderr and exit status 1."""
    try:
        main(sys.argv[1:])
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
