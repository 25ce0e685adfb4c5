"""One scikit-learn classifier per C of a grid, fitted on train; the one val scores best is kept.
The pixel baselines and the linear probe choose their regularisation this way, never on test."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def fit_by_val(
    make: Callable[[float], Any],
    c_grid: list[float],
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
) -> tuple[Any, float, dict[float, float]]:
    """(the fitted model, its C, val top-1 (%) per C); the first C of the grid wins a tie."""
    fits = [make(c).fit(*train) for c in c_grid]
    scores = [100.0 * float(np.mean(m.predict(val[0]) == val[1])) for m in fits]
    best = int(np.argmax(scores))
    return fits[best], c_grid[best], dict(zip(c_grid, scores, strict=True))
