"""The reference stage's work: deployment speed of a real-size merged ViT (ViT-S/16 at 224 by
default): PyTorch eager, torch.compile and CUDA graphs (on a GPU) in fp32 and bf16, against each
ONNX Runtime artefact (every INT8 form ORT has) and each OpenVINO one (the default compile of
the plain ONNX as the peer a user tries first, the IR in fp32 and bf16, NNCF's INT8), in images/s
and achieved TFLOP/s as a share of the hardware's peak at the row's precision, with ONNX
Runtime's operator profile and OpenVINO's per-layer counters to say where the time goes.

`best` per batch size is the fastest artefact the export stage ships whose top-1 stayed within
export.max_top1_drop on every shipped model (reports/export.json): accuracy is measured on the
trained models; this measures the real architecture (random weights: speed does not depend on
them). The default models are small enough for CPU training, too small for their latency to say
anything about a real deployment.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import timm
import torch

from pipeline import adapters, paths
from pipeline.config import Params, ReferenceConfig
from pipeline.export import export_onnx
from pipeline.export.fusable import fusable
from pipeline.export.openvino import quantize_openvino, to_openvino
from pipeline.export.optimize import attention_shape, optimize_vit
from pipeline.export.quantize import quantize_int8_dynamic, quantize_int8_static
from pipeline.io import read_json
from pipeline.manifest import KINDS
from pipeline.runtime import openvino
from pipeline.runtime.base import Backend
from pipeline.runtime.hardware import this_cpu
from pipeline.runtime.latency import label, latency_rows, p50_ratios, unstable, warn_unstable
from pipeline.runtime.ort import OnnxRuntimeBackend
from pipeline.runtime.profile import flops_per_image, openvino_profile, ort_profile
from pipeline.runtime.pytorch import CompiledTorchBackend, TorchBackend, torch_backend
from pipeline.train.loop import seed_everything

PROFILE_RUNS = 20
# torch.compile's weights as constants, prepacked for oneDNN on the CPU (inference only)
FREEZING = not torch.cuda.is_available()
# what the best artefact is compared with: ORT's dynamic INT8 (the best before OpenVINO) and
# the peer, OpenVINO's default compile of the plain ONNX
BARS = {"over_onnxruntime_int8": "onnxruntime-int8", "over_peer": "openvino-default"}
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
    """The PyTorch backends of `cfg.torch_backends` in each of `cfg.precisions`, but the float32
    eager one: that is the reference every row is compared with, made apart."""
    out = []
    for precision in cfg.precisions:
        for kind in cfg.torch_backends:
            if kind == "torch" and precision == "fp32":
                continue
            if kind == "cuda-graph" and not torch.cuda.is_available():
                print("cuda-graph: skipped (no CUDA GPU here)")
                continue
            if kind == "torch-compile":  # one graph per measured batch size: the fastest kernels
                print(f"torch-compile ({precision}): compiles at the first call of each batch size")
                backend = CompiledTorchBackend(
                    model, precision=precision, dynamic=False, freezing=FREEZING
                )
            else:
                backend = torch_backend(kind, model, precision, max(cfg.batch_sizes))
            out.append(backend)
    return out


def _onnx_artefacts(
    model: torch.nn.Module, cfg: ReferenceConfig, calibration: np.ndarray, d: Path
) -> tuple[dict[str, Path], dict]:
    """The ONNX Runtime artefacts of the export stage for `model` in folder `d`, the optimiser's
    full set of fusions (SkipLayerNormalization) beside the shipped configuration, and every INT8
    form; the fused-operator counts of both graphs."""
    heads, width = attention_shape(model)
    onnx = export_onnx(fusable(model)[0], d / "model.onnx", cfg.image_size)
    optimized, skipln = d / "optimized.onnx", d / "optimized-skipln.onnx"
    fused = {
        "fused_ops": optimize_vit(onnx, optimized, heads, width, False),
        "fused_ops_skip_layer_norm": optimize_vit(onnx, skipln, heads, width, True),
    }
    files = {
        "onnxruntime": onnx,
        "onnxruntime-optimized": optimized,
        "onnxruntime-optimized-skipln": skipln,
        "onnxruntime-int8": quantize_int8_dynamic(optimized, d / "int8.onnx"),
        "onnxruntime-int8-skipln": quantize_int8_dynamic(skipln, d / "int8-skipln.onnx"),
        "onnxruntime-int8-per-channel": quantize_int8_dynamic(
            optimized, d / "int8-per-channel.onnx", per_channel=True
        ),
        "onnxruntime-int8-static": quantize_int8_static(onnx, d / "int8-static.onnx", calibration),
        "onnxruntime-int8-static-s8s8": quantize_int8_static(
            onnx, d / "int8-static-s8s8.onnx", calibration, signed_activations=True
        ),
        "onnxruntime-int8-static-qoperator": quantize_int8_static(
            onnx, d / "int8-static-qoperator.onnx", calibration, qdq=False
        ),
    }
    return files, fused


def openvino_backends(
    onnx: Path, cfg: ReferenceConfig, calibration: np.ndarray, threads: int, d: Path
) -> tuple[list[Backend], dict[str, str]]:
    """The OpenVINO backends of `cfg.openvino` (the IRs converted and quantized into `d`), and
    the reason for each one skipped here."""
    wanted = [n for n in cfg.openvino if n != "openvino-default"]
    skipped = {}
    if reason := openvino.unavailable():
        return [], dict.fromkeys(cfg.openvino, reason)
    if "openvino-bf16" in wanted and (reason := openvino.bf16_unavailable()):
        skipped["openvino-bf16"] = reason
        wanted.remove("openvino-bf16")
    xml = to_openvino(onnx, d / KINDS["openvino"].file) if wanted else None
    if "openvino-int8" in wanted:
        quantize_openvino(xml, d / KINDS["openvino-int8"].file, calibration)
    out: list[Backend] = []
    if "openvino-default" in cfg.openvino:
        out.append(openvino.OpenVinoBackend(onnx, threads, "default", name="openvino-default"))
    out += [
        openvino.OpenVinoBackend(d / KINDS[n].file, threads, KINDS[n].precision, name=n)
        for n in wanted
    ]
    return out, skipped


def precision_of(backend: Backend) -> str:
    """What a row computes in: fp32, bf16 or int8 (OpenVINO's default: what it chose)."""
    if isinstance(backend, TorchBackend):
        return "bf16" if backend.dtype == torch.bfloat16 else "fp32"
    if isinstance(backend, openvino.OpenVinoBackend):
        if backend.precision == "default":
            return "bf16" if backend.inference_precision == "bf16" else "fp32"
        return backend.precision
    return "int8" if "int8" in backend.name else "fp32"


def shippable(export_report: dict | None) -> set[str]:
    """The artefacts the export stage ships whose top-1 was within export.max_top1_drop on
    every shipped model (all fp32 artefacts where export.json is not there)."""
    if export_report is None:
        return {a for a, k in KINDS.items() if k.precision == "fp32"}
    models = [m for m in export_report["models"].values() if "recommended" in m]
    return {
        a
        for a, kind in KINDS.items()
        if models and all(m.get(f"{kind.key}_within_bound", a == "onnxruntime") for m in models)
    }


def best_rows(rows: list[dict], eligible: set[str]) -> dict:
    """Per batch size, the fastest row of an eligible artefact and its speed-up over each row
    of `BARS`."""
    out = {}
    for bs in sorted({r["batch_size"] for r in rows}):
        at = {r["backend"]: r for r in rows if r["batch_size"] == bs}
        candidates = [r for name, r in at.items() if name in eligible]
        if not candidates:
            continue
        best = min(candidates, key=lambda r: r["p50_ms"])
        entry = {"backend": best["backend"], "p50_ms": best["p50_ms"]}
        for key, ref in BARS.items():
            if ref in at:
                entry[key] = at[ref]["p50_ms"] / best["p50_ms"]
        out[str(bs)] = entry
    return out


def reference_report(params: Params) -> dict:
    """reports/reference.json: the hardware and its peaks, the rows, the speed-ups over torch
    eager, `best` per batch size, ONNX Runtime's and OpenVINO's per-operator profile."""
    cfg, threads = params.benchmark.reference, params.benchmark.threads
    seed_everything(params.seed)
    torch.set_num_threads(threads)
    model = merged_model(cfg.arch, cfg.num_classes, cfg.image_size)
    rng = np.random.default_rng(params.seed)
    shape = (3, cfg.image_size, cfg.image_size)
    images = rng.uniform(-1, 1, (max(cfg.batch_sizes), *shape)).astype(np.float32)
    calibration = rng.uniform(-1, 1, (cfg.calibration_images, *shape)).astype(np.float32)
    flops = flops_per_image(model, shape)
    on_gpu = torch.cuda.is_available()
    report: dict = {
        "arch": cfg.arch,
        "image_size": cfg.image_size,
        "threads": threads,
        "device": "cuda" if on_gpu else "cpu",
        "gflop_per_image": flops / 1e9,
        "torch_compile_freezing": FREEZING,
    }
    if on_gpu:
        peaks = dict.fromkeys(("fp32", "bf16", "int8"), cfg.peak_tflops)
    else:
        report["hardware"] = this_cpu().describe(threads)
        peaks = report["hardware"]["peak_tflops"]
    export_json = paths.REPORTS / "export.json"
    eligible = shippable(read_json(export_json) if export_json.is_file() else None)
    with tempfile.TemporaryDirectory() as scratch:
        files, fused = _onnx_artefacts(model, cfg, calibration, Path(scratch))
        report.update(fused)
        ov_backends, report["skipped"] = openvino_backends(
            files["onnxruntime"], cfg, calibration, threads, Path(scratch)
        )
        eager = TorchBackend(model)  # float32: what every other row is compared with
        backends = [eager, *torch_backends(model, cfg)]
        backends += [OnnxRuntimeBackend(files[n], threads, name=n) for n in cfg.onnxruntime]
        backends += ov_backends
        ref = eager.run(images)
        rows = []
        for backend in backends:
            out = backend.run(images)
            precision = precision_of(backend)
            fields = {
                "variant": cfg.arch,
                "precision": precision,
                "max_abs_diff_vs_torch": float(np.abs(out - ref).max()),
                "top1_agreement_vs_torch": float((out.argmax(1) == ref.argmax(1)).mean() * 100),
            }
            for row in latency_rows(
                backend,
                images,
                cfg.batch_sizes,
                cfg.warmup,
                cfg.iterations,
                params.benchmark.stability,
                params.benchmark.max_windows,
                on_device=True,
                max_images=cfg.max_images,
                **fields,
            ):
                row["tflops"] = row["throughput"] * flops / 1e12
                if peaks.get(precision):
                    row["of_peak"] = row["tflops"] / peaks[precision]
                rows.append(row)
            print(
                f"{label(backend)}: {rows[-1]['tflops']:.2f} TFLOP/s ({precision}), "
                f"max |diff| vs torch {fields['max_abs_diff_vs_torch']:.2e}"
            )
        report["profile_ms"] = {
            name: ort_profile(files[name], images[:1], PROFILE_RUNS, threads, scratch)
            for name in PROFILED
        }
        report["openvino_profile_ms"] = {
            b.name: openvino_profile(b, images[:1], PROFILE_RUNS) for b in ov_backends
        }
    over = p50_ratios(rows, "backend", lambda b: None if b == "torch" else "torch", _batch)
    report["speedup_over_torch"] = {
        f"{backend}@{bs}": 1 / ratio
        for backend, by_bs in over.items()
        for bs, ratio in by_bs.items()
    }
    report["best"] = best_rows(rows, eligible)
    report["rows"] = rows
    report["unstable"] = unstable(rows)
    for bs, entry in report["best"].items():
        ratios = ", ".join(f"{v:.2f}x {k[5:]}" for k, v in entry.items() if k.startswith("over"))
        print(f"best at batch {bs}: {entry['backend']} ({ratios})")
    warn_unstable(rows)  # last: the speed-ups above are built on these rows
    return report


def highlights(report: dict) -> dict[str, str]:
    """The rows the reference plot colours: the best per batch size and the two baselines."""
    sizes: dict[str, list[str]] = {}
    for bs, entry in report["best"].items():
        sizes.setdefault(entry["backend"], []).append(bs)
    best = {b: f"best at batch {', '.join(s)}" for b, s in sizes.items()}
    return {"onnxruntime-int8": "ORT INT8", "openvino-default": "OpenVINO default (peer)", **best}


def _batch(row: dict) -> tuple[int]:
    return (row["batch_size"],)
