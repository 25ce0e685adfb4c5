"""Where the time goes: ONNX Runtime's operator profile, OpenVINO's per-layer performance
counters, and FLOPs counted by torch."""

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


def openvino_profile(backend: object, images: np.ndarray, runs: int) -> dict[str, float]:
    """OpenVINO's performance counters for an `OpenVinoBackend`'s model, compiled again as it
    was with counting on: mean time per call (ms) by layer type and the kernel that ran it
    (`MatMul/brgemm_avx512_amx_I8`: which ISA did the work), largest first."""
    import openvino as ov

    from pipeline.runtime.openvino import compile_config

    config = {**compile_config(backend.precision, backend.threads), "PERF_COUNT": "YES"}
    request = ov.Core().compile_model(str(backend.path), "CPU", config).create_infer_request()
    x = np.ascontiguousarray(images, np.float32)
    totals: dict[str, float] = {}
    for _ in range(runs):
        request.infer({0: x})
        for layer in request.profiling_info:
            if layer.status == layer.Status.EXECUTED:
                key = f"{layer.node_type}/{layer.exec_type}"
                totals[key] = totals.get(key, 0.0) + layer.real_time.total_seconds() * 1e3 / runs
    return {k: round(ms, 4) for k, ms in sorted(totals.items(), key=lambda kv: -kv[1]) if ms > 0}


def flops_per_image(model: torch.nn.Module, image_shape: tuple[int, int, int]) -> float:
    """FLOPs (2 per multiply-accumulate) of one image through `model`, counted by torch from
    the operators it runs: matmuls, convolutions and attention."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *image_shape, device=device))
    return float(counter.get_total_flops())
