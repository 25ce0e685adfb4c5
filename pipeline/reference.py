"""The reference stage's work: deployment speed of a real-size merged ViT (ViT-S/16 at 224 by
default): PyTorch eager, torch.compile and CUDA graphs (on a GPU; in bf16 with `precision: bf16`)
against each ONNX Runtime artefact the export stage makes, in images/s and achieved TFLOP/s (a
share of the device's peak when `peak_tflops` is given), with ONNX Runtime's operator profile of
the optimised and INT8 graphs to say where the time goes.

The default models are small enough for CPU training, too small for their latency to say
anything about a real deployment; this measures the real architecture instead (random weights:
speed does not depend on them; accuracy is measured on the trained models, in export.json).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import timm
import torch

from pipeline import adapters
from pipeline.config import Params, ReferenceConfig
from pipeline.export import export_onnx
from pipeline.export.fusable import fusable
from pipeline.export.optimize import attention_shape, optimize_vit
from pipeline.export.quantize import quantize_int8_dynamic, quantize_int8_static
from pipeline.runtime.latency import latency_rows, p50_ratios
from pipeline.runtime.ort import OnnxRuntimeBackend
from pipeline.runtime.profile import flops_per_image, ort_profile
from pipeline.runtime.pytorch import CompiledTorchBackend, TorchBackend, torch_backend
from pipeline.train.loop import seed_everything

PROFILE_RUNS = 20
PROFILED = (
    "onnxruntime-optimized",
    "onnxruntime-optimized-skipln",
    "onnxruntime-int8",
    "onnxruntime-int8-skipln",
)


def merged_model(arch: str, num_classes: int, image_size: int) -> torch.nn.Module:
    """`arch` with a LoRA whose up-projections are non-zero, merged: a plain timm ViT."""
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, img_size=image_size)
    adapters.inject(model, "lora", rank=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return adapters.merge(model).eval()


def torch_backends(model: torch.nn.Module, cfg: ReferenceConfig) -> list[TorchBackend]:
    """The PyTorch backends of `cfg.torch_backends` in `cfg.precision`, but the float32 eager
    one: that is the reference every row is compared with, made apart."""
    out = []
    for kind in cfg.torch_backends:
        if kind == "torch" and cfg.precision == "fp32":
            continue
        if kind == "cuda-graph" and not torch.cuda.is_available():
            print("cuda-graph: skipped (no CUDA GPU here)")
            continue
        if kind == "torch-compile":  # one graph per measured batch size: the fastest kernels
            backend = CompiledTorchBackend(model, precision=cfg.precision, dynamic=False)
        else:
            backend = torch_backend(kind, model, cfg.precision, max(cfg.batch_sizes))
        out.append(backend)
    return out


def _onnx_artefacts(
    model: torch.nn.Module, cfg: ReferenceConfig, calibration: np.ndarray, d: Path
) -> tuple[dict[str, Path], dict]:
    """The ONNX Runtime artefacts of the export stage for `model` in folder `d`, and the
    optimiser's full set of fusions (SkipLayerNormalization) beside the shipped configuration;
    the fused-operator counts of both."""
    heads, width = attention_shape(model)
    onnx = export_onnx(fusable(model)[0], d / "model.onnx", cfg.image_size)
    fused = {
        "fused_ops": optimize_vit(onnx, d / "optimized.onnx", heads, width, False),
        "fused_ops_skip_layer_norm": optimize_vit(
            onnx, d / "optimized-skipln.onnx", heads, width, True
        ),
    }
    files = {
        "onnxruntime": onnx,
        "onnxruntime-optimized": d / "optimized.onnx",
        "onnxruntime-optimized-skipln": d / "optimized-skipln.onnx",
        "onnxruntime-int8": quantize_int8_dynamic(d / "optimized.onnx", d / "int8.onnx"),
        "onnxruntime-int8-skipln": quantize_int8_dynamic(
            d / "optimized-skipln.onnx", d / "int8-skipln.onnx"
        ),
        "onnxruntime-int8-static": quantize_int8_static(onnx, d / "int8-static.onnx", calibration),
    }
    return files, fused


def reference_report(params: Params) -> dict:
    """metrics/reference.json: the rows, the speed-ups over torch eager, the operator profile."""
    cfg, threads = params.benchmark.reference, params.benchmark.threads
    seed_everything(params.seed)
    torch.set_num_threads(threads)
    model = merged_model(cfg.arch, cfg.num_classes, cfg.image_size)
    rng = np.random.default_rng(params.seed)
    shape = (3, cfg.image_size, cfg.image_size)
    images = rng.uniform(-1, 1, (max(cfg.batch_sizes), *shape)).astype(np.float32)
    calibration = rng.uniform(-1, 1, (cfg.calibration_images, *shape)).astype(np.float32)
    flops = flops_per_image(model, shape)
    report: dict = {
        "arch": cfg.arch,
        "image_size": cfg.image_size,
        "threads": threads,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "precision": cfg.precision,
        "gflop_per_image": flops / 1e9,
    }
    with tempfile.TemporaryDirectory() as scratch:
        files, fused = _onnx_artefacts(model, cfg, calibration, Path(scratch))
        report.update(fused)
        eager = TorchBackend(model)  # float32: what every other row is compared with
        backends = [eager, *torch_backends(model, cfg)]
        backends += [OnnxRuntimeBackend(files[n], threads, name=n) for n in cfg.onnxruntime]
        ref = eager.run(images)
        rows = []
        for backend in backends:
            diff = float(np.abs(backend.run(images) - ref).max())
            for row in latency_rows(
                backend,
                images,
                cfg.batch_sizes,
                params.benchmark.warmup,
                params.benchmark.iterations,
                on_device=True,
                variant=cfg.arch,
            ):
                tflops = row["throughput"] * flops / 1e12
                row["tflops"] = tflops
                if cfg.peak_tflops:
                    row["of_peak"] = tflops / cfg.peak_tflops
                row["max_abs_diff_vs_torch"] = diff
                rows.append(row)
            print(f"{rows[-1]['backend']}: {tflops:.2f} TFLOP/s, max |diff| vs torch {diff:.2e}")
        report["profile_ms"] = {
            name: ort_profile(files[name], images[:1], PROFILE_RUNS, threads, scratch)
            for name in PROFILED
        }
    over = p50_ratios(rows, "backend", lambda b: None if b == "torch" else "torch", _batch)
    report["speedup_over_torch"] = {
        f"{backend}@{bs}": 1 / ratio
        for backend, by_bs in over.items()
        for bs, ratio in by_bs.items()
    }
    report["rows"] = rows
    for key, ratio in report["speedup_over_torch"].items():
        print(f"{key}: {ratio:.2f}x torch eager")
    return report


def _batch(row: dict) -> tuple[int]:
    return (row["batch_size"],)
