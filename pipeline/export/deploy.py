"""The export stage's work: every deployable model to ONNX, checked against torch on the test set;
what ships also optimised, in FP16 and INT8, as an OpenVINO IR (fp32, bf16 where the CPU has it,
and NNCF's INT8), as a TensorRT engine where a GPU is present, and in the Triton model
repository, with the artefact recommended for this machine; a manifest per model once its folder
is complete."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import paths
from pipeline.artifacts import deployables, load_deployable, load_task, shipped
from pipeline.config import ExportConfig, Params
from pipeline.data import MEAN, STD, ImageSet, to_tensor
from pipeline.export import tensorrt, triton
from pipeline.export.fusable import fusable
from pipeline.export.metadata import preprocessing
from pipeline.export.onnx import export_onnx
from pipeline.export.openvino import quantize_openvino, to_openvino
from pipeline.export.optimize import attention_shape, optimize_vit
from pipeline.export.quantize import quantize_int8_dynamic, quantize_int8_static, to_fp16
from pipeline.export.recommend import recommend
from pipeline.manifest import KINDS, Manifest
from pipeline.runtime import openvino, run_batched
from pipeline.runtime.open import open_backend
from pipeline.runtime.parity import parity, require_equal, top1
from pipeline.train.loop import predict
from pipeline.variants import Variant, all_variants


@dataclass(frozen=True)
class Shipping:
    """What every shipped model's artefacts are built from: calibration images, the validation
    split (NNCF's accuracy control), which runtimes are missing here and why, and the latency
    probe's settings."""

    cfg: ExportConfig
    calibration: np.ndarray
    validation: tuple[np.ndarray, np.ndarray]
    skipped: dict[str, str]  # artefact -> why it is not built here
    batch_sizes: list[int]
    threads: int
    stability: float  # benchmark.stability and benchmark.max_windows: the probe's rule
    max_windows: int


def export_all(params: Params) -> dict:
    """Export every deployable model of the run; the report reports/export.json holds."""
    cfg = params.export
    train, val, test = load_task("train", "val", "test")
    skipped = {"tensorrt": tensorrt.unavailable(), "openvino": openvino.unavailable()}
    skipped["openvino-bf16"] = skipped["openvino"] or openvino.bf16_unavailable()
    shipping = Shipping(
        cfg=cfg,
        calibration=to_tensor(train.images[: cfg.calibration_images]).numpy(),
        validation=(to_tensor(val.images).numpy(), np.asarray(val.labels)),
        skipped={k: v for k, v in skipped.items() if v},
        batch_sizes=cfg.probe_batch_sizes,
        threads=params.benchmark.threads,
        stability=params.benchmark.stability,
        max_windows=params.benchmark.max_windows,
    )
    models = {}
    for name, variant in deployables(all_variants(params)).items():
        models[name] = export_model(name, variant, test, shipping)
        print(_summary(name, models[name]))
    runtimes = {k: f"skipped: {v}" if v else "built" for k, v in skipped.items()}
    return {**runtimes, "models": models}


def export_model(name: str, variant: Variant, test: ImageSet, shipping: Shipping) -> dict:
    """One model's folder under models/onnx (and its Triton models, if it ships); its row."""
    cfg = shipping.cfg
    model = load_deployable(name, variant)
    ref = predict(model, test).numpy()
    images = to_tensor(test.images).numpy()
    folder = paths.ONNX / name
    # the same function in the layout ONNX Runtime's optimiser fuses (plain ViTs only)
    graph, rewritten = fusable(model)
    path = export_onnx(
        graph,
        folder / KINDS["onnxruntime"].file,
        images.shape[-1],
        cfg.opset,
        metadata=preprocessing(test.classes),
    )
    torch_folder = paths.MERGED / name if name == variant.merged_name else variant.folder
    manifest = Manifest(
        name=name,
        variant=variant.name,
        shipped=shipped(name, variant),
        torch=os.path.relpath(torch_folder, folder),
        input_shape=list(images.shape[1:]),
        num_classes=ref.shape[1],
        max_batch_size=cfg.max_batch_size,
        classes=list(test.classes),
        mean=list(MEAN),
        std=list(STD),
        folder=folder,
    )

    torch_top1 = top1(ref, test.labels)

    def check(artefact: str) -> dict[str, float]:
        """Run an artefact on the test set, compare it with torch, list it in the manifest
        with its top-1 drop and whether that is within export.max_top1_drop."""
        backend = open_backend(artefact, folder / KINDS[artefact].file)
        stats = parity(ref, run_batched(backend, images), test.labels)
        drop = torch_top1 - stats["top1"]
        stats = {**stats, "top1_drop": drop, "within_bound": drop <= cfg.max_top1_drop}
        manifest.add(artefact, stats)
        return stats

    stats = check("onnxruntime")
    require_equal(name, "ONNX Runtime", stats, cfg.tolerance, "export.tolerance")
    ir: dict[str, float] = {}
    if "openvino" not in shipping.skipped:  # every model: merged against unmerged on OpenVINO
        to_openvino(path, folder / KINDS["openvino"].file)
        ir = check("openvino")
        require_equal(name, "the OpenVINO IR", ir, cfg.tolerance, "export.tolerance")
    row = {
        "onnx_path": str(path),
        **stats,
        **{f"openvino_{k}": v for k, v in ir.items()},
        "torch_top1": torch_top1,
        "opset": cfg.opset,
        "bytes": path.stat().st_size,
        "attention_rewritten": rewritten,
    }
    if ir:
        row["openvino_path"] = str(manifest.path("openvino"))
    if manifest.shipped:
        row.update(_ship(manifest, model, shipping, check))
        advice = recommend(
            manifest,
            images,
            shipping.batch_sizes,
            shipping.threads,
            shipping.stability,
            shipping.max_windows,
        )
        manifest.recommended = advice["recommended"]
        row.update(advice)
        _add_to_triton(manifest, cfg.max_queue_delay_us, shipping.threads)
    manifest.write()
    return row


def _ship(
    manifest: Manifest,
    model: torch.nn.Module,
    shipping: Shipping,
    check: Callable[[str], dict[str, float]],
) -> dict:
    """The deployment artefacts beside model.onnx, each checked against torch by `check`: the
    fp32 ones to export.tolerance, the reduced-precision ones by their top-1 drop."""
    cfg, folder, onnx = shipping.cfg, manifest.folder, manifest.path("onnxruntime")

    def file(artefact: str) -> Path:
        return folder / KINDS[artefact].file

    fused = optimize_vit(
        onnx, file("onnxruntime-optimized"), *attention_shape(model), cfg.skip_layer_norm
    )
    to_fp16(file("onnxruntime-optimized"), file("onnxruntime-fp16"))
    quantize_int8_dynamic(file("onnxruntime-optimized"), file("onnxruntime-int8"))
    quantize_int8_static(onnx, file("onnxruntime-int8-static"), shipping.calibration)
    built = [
        "onnxruntime-optimized",
        "onnxruntime-fp16",
        "onnxruntime-int8",
        "onnxruntime-int8-static",
    ]
    if "openvino" not in shipping.skipped:
        quantize_openvino(
            file("openvino"),
            file("openvino-int8"),
            shipping.calibration,
            cfg.openvino.smooth_quant_alpha,
            shipping.validation if cfg.openvino.accuracy_control else None,
            max_drop=cfg.max_top1_drop / 100,
            max_iterations=cfg.openvino.max_iterations,
        )
        built += [a for a in ("openvino-bf16", "openvino-int8") if a not in shipping.skipped]
    if "tensorrt" not in shipping.skipped:
        tensorrt.build_engine(
            onnx,
            file("tensorrt"),
            manifest.input_shape[-1],
            cfg.max_batch_size,
            file("onnxruntime-fp16"),
        )
        built.append("tensorrt")
    out: dict = {"fused_ops": fused}
    for artefact in built:
        stats = check(artefact)
        key = KINDS[artefact].key
        out[f"{key}_path"] = str(manifest.path(artefact))
        out.update({f"{key}_{k}": v for k, v in stats.items()})
        if KINDS[artefact].precision == "fp32":
            what = f"the {artefact} artefact"
            require_equal(manifest.name, what, stats, cfg.tolerance, "export.tolerance")
    return out


def _add_to_triton(manifest: Manifest, max_queue_delay_us: int, threads: int) -> None:
    """The optimised ONNX graph (on the onnxruntime backend, and on ONNX Runtime in the Python
    backend with the benchmark's `threads`), the engine, and the OpenVINO IR to deploy (the
    recommended one where it is an IR, else INT8 if within the bound, else fp32) as Triton
    models."""
    optimized = "onnxruntime-optimized"
    triton.add_model(paths.TRITON, manifest, optimized, max_queue_delay_us)
    triton.add_python_model(paths.TRITON, manifest, optimized, max_queue_delay_us, threads)
    if "tensorrt" in manifest.artefacts:
        triton.add_model(paths.TRITON, manifest, "tensorrt", max_queue_delay_us)
    irs = [a for a in manifest.artefacts if KINDS[a].runtime == "openvino"]
    if irs:
        best = manifest.recommended if manifest.recommended in irs else None
        eligible = [a for a in irs if manifest.artefacts[a].get("within_bound", True)]
        triton.add_model(paths.TRITON, manifest, best or eligible[-1], max_queue_delay_us)


def _summary(name: str, row: dict) -> str:
    text = f"{name}: max |ort - torch| = {row['max_abs_diff']:.2e}, top-1 {row['top1']:.2f}%"
    if "int8_top1" in row:
        fused = ", ".join(f"{k} {v}" for k, v in row["fused_ops"].items() if v)
        text += (
            f"; fused {fused}; optimised {row['optimized_max_abs_diff']:.2e}; top-1 fp16 "
            f"{row['fp16_top1']:.2f}%, int8 {row['int8_top1']:.2f}%, "
            f"int8 static {row['int8_static_top1']:.2f}%"
        )
    if "openvino_int8_top1" in row:
        text += f", openvino int8 {row['openvino_int8_top1']:.2f}%"
    if "recommended" in row:
        text += f"; recommended here: {row['recommended']}"
    return text
