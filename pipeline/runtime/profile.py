"""Where the time goes: ONNX Runtime's operator profile, and FLOPs counted by torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def ort_profile(
    path: str | Path, images: np.ndarray, runs: int, threads: int, scratch: str | Path
) -> dict[str, float]:
    """ONNX Runtime's own profiler: mean kernel time per call (ms) of each operator type over
    `runs` calls, largest first; `scratch` is a folder for the profiler's trace file."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(scratch) / "ort_profile")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(images, np.float32)}
    for _ in range(runs):
        session.run(None, feed)
    totals: dict[str, float] = {}
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + event["dur"] / 1e3 / runs
    return {op: round(ms, 4) for op, ms in sorted(totals.items(), key=lambda kv: -kv[1])}


def flops_per_image(model: torch.nn.Module, image_shape: tuple[int, int, int]) -> float:
    """FLOPs (2 per multiply-accumulate) of one image through `model`, counted by torch from
    the operators it runs: matmuls, convolutions and attention."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *image_shape, device=device))
    return float(counter.get_total_flops())
