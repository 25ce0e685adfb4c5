"""reference: deployment speed of a real-size merged ViT (ViT-S/16 at 224 by default): PyTorch
eager, torch.compile and CUDA graphs (on a GPU; in bf16 with `precision: bf16`) against each
ONNX Runtime artefact the export stage makes, in images/s and achieved TFLOP/s (a share of the
device's peak when `peak_tflops` is given), with ONNX Runtime's operator profile of the
optimised and INT8 graphs to say where the time goes.

The default models are small enough for CPU training, too small for their latency to say
anything about a real deployment; this stage measures the real architecture instead (random
weights: speed does not depend on them; accuracy is measured on the trained models, in
metrics/export.json).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch

from pipeline import adapters, paths
from pipeline.bench import flops_per_image, measure, ort_profile
from pipeline.cli import run_stage
from pipeline.config import ReferenceConfig, load_params
from pipeline.export import export_onnx
from pipeline.export.fusable import fusable
from pipeline.export.optimize import attention_shape, optimize_vit
from pipeline.export.quantize import quantize_int8_dynamic, quantize_int8_static
from pipeline.io import write_json
from pipeline.plots import latency_bars
from pipeline.train.loop import seed_everything
from serve.backends import (
    CompiledTorchBackend,
    OnnxRuntimeBackend,
    TorchBackend,
    torch_backend,
)

PROFILE_RUNS = 20


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


def timed_call(backend: object, x: np.ndarray) -> tuple[Callable[[], object], str]:
    """What one timed call runs, and where its inputs live. A PyTorch backend on a GPU is timed
    on a batch already on the device, synchronised after: the figure is the model's, not the
    host-to-device copy's (the served figures include that copy)."""
    if isinstance(backend, TorchBackend) and backend.on_gpu:
        on_device = torch.from_numpy(x).to(backend.device, backend.dtype)

        def call() -> None:
            with torch.inference_mode():
                backend.forward(on_device)
            torch.cuda.synchronize(backend.device)

        return call, "device"
    return (lambda: backend.run(x)), "host"


def main(argv: list[str]) -> None:
    params = load_params()
    cfg, threads = params.benchmark.reference, params.benchmark.threads
    seed_everything(params.seed)
    torch.set_num_threads(threads)
    model = merged_model(cfg.arch, cfg.num_classes, cfg.image_size)
    rng = np.random.default_rng(params.seed)
    shape = (3, cfg.image_size, cfg.image_size)
    images = rng.uniform(-1, 1, (max(cfg.batch_sizes), *shape)).astype(np.float32)
    calibration = rng.uniform(-1, 1, (cfg.calibration_images, *shape)).astype(np.float32)
    heads, width = attention_shape(model)
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
        d = Path(scratch)
        onnx = export_onnx(fusable(model)[0], d / "model.onnx", cfg.image_size)
        # the shipped CPU configuration, and the optimiser's full set of fusions beside it
        report["fused_ops"] = optimize_vit(onnx, d / "optimized.onnx", heads, width, False)
        report["fused_ops_skip_layer_norm"] = optimize_vit(
            onnx, d / "optimized-skipln.onnx", heads, width, True
        )
        files = {
            "onnxruntime": onnx,
            "onnxruntime-optimized": d / "optimized.onnx",
            "onnxruntime-optimized-skipln": d / "optimized-skipln.onnx",
            "onnxruntime-int8": quantize_int8_dynamic(d / "optimized.onnx", d / "int8.onnx"),
            "onnxruntime-int8-skipln": quantize_int8_dynamic(
                d / "optimized-skipln.onnx", d / "int8-skipln.onnx"
            ),
            "onnxruntime-int8-static": quantize_int8_static(
                onnx, d / "int8-static.onnx", calibration
            ),
        }
        eager = TorchBackend(model)  # float32: what every other row is compared with
        backends = [eager, *torch_backends(model, cfg)]
        backends += [OnnxRuntimeBackend(files[n], threads, name=n) for n in cfg.onnxruntime]
        ref = eager.run(images)
        rows = []
        for backend in backends:
            label = getattr(backend, "label", backend.name)
            out = backend.run(images)
            diff = float(np.abs(out - ref).max())
            for bs in cfg.batch_sizes:
                call, inputs = timed_call(backend, images[:bs])
                stats = measure(call, bs, params.benchmark.warmup, params.benchmark.iterations)
                tflops = stats["throughput"] * flops / 1e12
                rows.append(
                    {
                        "variant": cfg.arch,
                        "backend": label,
                        "batch_size": bs,
                        **stats,
                        "inputs": inputs,
                        "tflops": tflops,
                        **({"of_peak": tflops / cfg.peak_tflops} if cfg.peak_tflops else {}),
                        "max_abs_diff_vs_torch": diff,
                    }
                )
                print(
                    f"{label:30s} batch {bs:3d}: p50 {stats['p50_ms']:8.2f} ms "
                    f"{stats['throughput']:9.1f} img/s {tflops:7.2f} TFLOP/s  "
                    f"max |diff| vs torch {diff:.2e}"
                )
        report["profile_ms"] = {
            name: ort_profile(files[name], images[:1], PROFILE_RUNS, threads, d)
            for name in (
                "onnxruntime-optimized",
                "onnxruntime-optimized-skipln",
                "onnxruntime-int8",
                "onnxruntime-int8-skipln",
            )
        }
    torch_p50 = {r["batch_size"]: r["p50_ms"] for r in rows if r["backend"] == "torch"}
    report["speedup_over_torch"] = {
        f"{r['backend']}@{r['batch_size']}": torch_p50[r["batch_size"]] / r["p50_ms"]
        for r in rows
        if r["backend"] != "torch"
    }
    report["rows"] = rows
    write_json(paths.METRICS / "reference.json", report)
    latency_bars(rows, paths.PLOTS / "reference.png")
    for key, ratio in report["speedup_over_torch"].items():
        print(f"{key}: {ratio:.2f}x torch eager")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main)
