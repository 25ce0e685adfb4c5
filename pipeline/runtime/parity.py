"""How an artefact's logits compare with the reference logits (torch's) on the same images."""

from __future__ import annotations

import numpy as np

from pipeline import PipelineError


def parity(ref: np.ndarray, out: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """max |out - ref|, the share of images whose top-1 class agrees (%), and out's top-1 (%)."""
    ref, out = np.asarray(ref), np.asarray(out)
    return {
        "max_abs_diff": float(np.abs(ref - out).max()),
        "top1_agreement": float((ref.argmax(1) == out.argmax(1)).mean() * 100),
        "top1": top1(out, labels),
    }


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (%) of logits against labels."""
    return float((np.asarray(logits).argmax(1) == np.asarray(labels)).mean() * 100)


def require_equal(
    name: str,
    what: str,
    stats: dict[str, float],
    tolerance: float,
    setting: str,
    agreement: bool = True,
) -> None:
    """Fail unless `what` matches its reference to `tolerance` (and, with `agreement`, with
    every top-1 in agreement); the error names the model and the setting that holds the
    tolerance."""
    agrees = stats["top1_agreement"] == 100.0 or not agreement
    if not (stats["max_abs_diff"] <= tolerance and agrees):
        raise PipelineError(
            f"{name}: {what} differs from its reference by {stats['max_abs_diff']:.3g} "
            f"({setting} {tolerance:g}), top-1 agreement {stats['top1_agreement']:.2f}%"
        )
