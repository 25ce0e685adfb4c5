"""The real DVC pipeline, end to end, on a tiny setting of the embedded default data."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

from pipeline.kinds import KINDS
from serve.triton import unavailable as triton_unavailable

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY_VIT = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
TINY_PARAMS = {
    "data": {"image_size": 16},
    "pretrain": {"num_classes": 4, "samples_per_class": 40, "epochs": 1, "batch_size": 64},
    "backbone": {
        "teacher": {"kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}},
        "student": {"kwargs": {"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}},
    },
    "train": {
        "epochs": 2,
        "warmup_epochs": 1,
        # one of each kind: LoRA on both roles, a shared-parameter adapter, an unmergeable one
        "variants": [
            "teacher-lora",
            "student-lora",
            "student-arc",
            "student-adapter",
            "student-linear",
        ],
    },
    "distill": {
        "variants": ["student-lora-kd", "student-lora_qkv-wecolora"],
        "wecolora": {"recipe": {"epochs": 1}},
    },
    "continual": {
        "tasks": 2,
        "recipe": {"epochs": 1, "batch_size": 64},
        "l2p": {"pool": 4, "length": 4, "top_k": 2},
        "dualprompt": {"g_length": 2, "e_length": 4},
        "coda": {"components": 4, "length": 4},
    },
    "seeds": {"count": 2},
    "export": {"calibration_images": 32},
    "benchmark": {
        "batch_sizes": [1, 4],
        "warmup": 1,
        "iterations": 3,
        "reference": {
            "arch": "vit_tiny_patch16_224",
            "image_size": 32,
            "calibration_images": 2,
            "batch_sizes": [1, 4],
            "precisions": ["fp32"],  # torch.compile: one graph per batch size and precision
        },
        "training": {
            "model": {"arch": "vit_tiny_patch16_224", "kwargs": TINY_VIT},
            "idat_teacher": {"arch": "vit_tiny_patch16_224", "kwargs": {**TINY_VIT, "depth": 1}},
            "image_size": 16,
            "batch_size": 8,
            "warmup": 1,
            "steps": 2,
        },
        "serve": {
            "backends": ["torch", "onnxruntime"],
            "variants": ["student-lora"],
            "concurrency": [1, 4],
            "window_ms": 200,
            "max_windows": 3,
            "warmup_s": 0.2,
            "yardstick": 1,
        },
    },
}


def _merge(base: dict, change: dict) -> dict:
    for k, v in change.items():
        base[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


def _project(tmp: Path, **changes) -> Path:
    for name in ("pipeline", "stages", "serve"):
        shutil.copytree(ROOT / name, tmp / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "studies/dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore"):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp / name)
    if (ROOT / ".venv-triton").is_dir():  # the benchmark's yardstick finds Triton beside serve/
        (tmp / ".venv-triton").symlink_to(ROOT / ".venv-triton")
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY_PARAMS)
    (tmp / "params.yaml").write_text(yaml.safe_dump(_merge(params, changes)))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "project"]):
        subprocess.run([*git, *cmd], cwd=tmp, check=True)
    return tmp


def _run(cwd: Path, *cmd: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    tmp = _project(tmp_path_factory.mktemp("project"))
    proc = _run(tmp, "dvc", "repro")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp


def _json(project: Path, name: str):
    """A stage's whole report."""
    return json.loads((project / "reports" / name).read_text())


def _summary(project: Path, name: str) -> dict:
    return json.loads((project / "metrics" / name).read_text())


def test_summaries_are_small_flat_and_agree_with_the_reports(project):
    """metrics/ holds what runs are compared by: {metric: {name: figure}}, scalars only."""
    stages = ("prepare", "merge", "export", "evaluate", "benchmark", "reference")
    stages += ("train_benchmark", "continual")
    assert sorted(p.name for p in (project / "metrics").glob("*.json")) == sorted(
        f"{s}.json" for s in stages
    )
    for stage in stages:
        summary = _summary(project, f"{stage}.json")
        figures = [v for group in summary.values() for v in group.values()]
        assert all(isinstance(v, (int, float, str)) or v is None for v in figures), stage
        assert 0 < len(figures) <= 60, stage
    evaluate = _json(project, "evaluate.json")
    top1 = _summary(project, "evaluate.json")["top1"]
    assert set(top1) == set(evaluate)
    for name, row in evaluate.items():
        assert top1[name] == pytest.approx(row["top1"], rel=1e-3)
    assert _summary(project, "prepare.json")["images"] == {"train": 800, "val": 200, "test": 797}
    merge = _summary(project, "merge.json")["parity"]
    assert merge["models"] == 5 and 0 <= merge["max_abs_diff"] <= 1e-4
    bench = _summary(project, "benchmark.json")
    assert set(bench["served_images_per_s"]) == {"torch@c4", "onnxruntime@c4"}
    assert bench["stability"]["rows"] == len(_json(project, "benchmark.json")["rows"])
    assert set(bench["unmerged_over_merged"]) == {"torch", "onnxruntime", "openvino"}
    levels = {f"b{b}@c{c}" for b in (1, 4) for c in (1, 4)}  # batch 1 and the largest
    assert set(bench["grpc_over_http"]) == levels
    if triton_unavailable() is None:
        assert set(bench["vs_triton"]) == {
            *(f"{p}_{k}" for p in ("http", "grpc") for k in levels),
            "p50_http_b1@c1",
            "p50_grpc_b1@c1",
        }
        assert all(v > 0 for v in bench["vs_triton"].values())


def test_metrics_contracts(project):
    evaluate = _json(project, "evaluate.json")
    names = {
        "teacher-lora",
        "student-lora",
        "student-arc",
        "student-adapter",
        "student-linear",
        "teacher-lora-merged",
        "student-lora-merged",
        "student-arc-merged",
        "student-lora-kd",
        "student-lora-kd-merged",
        "student-lora_qkv-wecolora",
        "student-lora_qkv-wecolora-merged",
    }
    baselines = {"pixels-logreg", "pixels-svc"}
    assert set(evaluate) == names | baselines
    for name in baselines:  # the 16 px images averaged to 8 x 8: strong on digits
        assert evaluate.pop(name)["top1"] > 90 and evaluate.pop(name, None) is None
    for row in evaluate.values():
        assert 0 <= row["top1"] <= 100
        assert row["top1_onnxruntime"] == pytest.approx(row["top1"], abs=0.2)
        assert 0 < row["params_trainable"] < row["params_total"]
    for name in ("teacher-lora", "student-lora", "student-arc"):
        assert evaluate[f"{name}-merged"]["top1"] == pytest.approx(evaluate[name]["top1"], abs=0.2)

    merge = _json(project, "merge.json")
    assert set(merge) == {n for n in names if n.endswith("-merged")}
    for row in merge.values():
        assert row["max_abs_diff"] <= 1e-4
        assert 0 < row["adapter_bytes"] < row["model_bytes"]

    export = _json(project, "export.json")
    assert export["tensorrt"].startswith("skipped: ") or torch.cuda.is_available()
    models = export["models"]
    assert set(models) == names
    shipped = {n for n in names if n.endswith("-merged")} | {"student-adapter", "student-linear"}
    assert export["openvino"] == "built"
    bf16 = export["openvino-bf16"] == "built"
    for name, row in models.items():
        assert (project / row["onnx_path"]).is_file()
        assert row["max_abs_diff"] <= 1e-4 and row["top1_agreement"] == 100.0
        assert (project / row["openvino_path"]).with_suffix(".bin").is_file()
        assert row["openvino_max_abs_diff"] <= 1e-4 and row["openvino_top1_agreement"] == 100.0
        assert ("int8_path" in row) == (name in shipped)
    for name in shipped:
        row = models[name]
        for key in ("optimized", "fp16", "int8", "int8_static", "openvino_int8"):
            assert (project / row[f"{key}_path"]).is_file()
        assert ("openvino_bf16_top1" in row) == bf16
        assert row["optimized_max_abs_diff"] <= 1e-4
        assert row["fp16_top1_agreement"] >= 95
        assert abs(row["int8_top1"] - row["top1"]) <= 10  # tiny models, 2 epochs: loose
        assert row["openvino_int8_top1_drop"] <= 10
        # the recommendation is the fastest of the artefacts within the top-1 bound
        probe = row["probe_ms_per_image"]
        assert row["recommended"] == min(probe, key=lambda a: probe[a]["32"])
        assert all(row[f"{KINDS[a].key}_within_bound"] for a in probe if a != "onnxruntime")
        manifest = json.loads((project / f"models/onnx/{name}/manifest.json").read_text())
        assert manifest["recommended"] == row["recommended"]
        config = project / "models/triton" / name / "config.pbtxt"
        assert f'name: "{name}"' in config.read_text()
        assert (config.parent / "1/model.onnx").is_file()
        ir = project / "models/triton" / f"{name}-openvino"
        assert 'backend: "openvino"' in (ir / "config.pbtxt").read_text()
        assert (ir / "1/model.xml").is_file() and (ir / "1/model.bin").is_file()
    # attention fuses in every plain ViT; the adapter's wrapped blocks keep theirs apart
    assert models["student-lora-merged"]["fused_ops"]["Attention"] == 1
    assert models["teacher-lora-merged"]["fused_ops"]["Attention"] == 2
    assert models["student-lora"]["attention_rewritten"] == 0

    bench = _json(project, "benchmark.json")
    rows = [r for r in bench["rows"] if r["transport"] == "in-process"]
    ir = ["openvino-int8", *(["openvino-bf16"] if bf16 else [])]  # timed where shipped
    backends = ["torch", "onnxruntime", "onnxruntime-optimized", "onnxruntime-int8", "openvino"]
    per_shipped = len(backends) + len(ir)
    assert len(rows) == (len(names) - len(shipped)) * 3 * 2 + len(shipped) * per_shipped * 2
    assert set(bench["unmerged_over_merged"]) == {n[: -len("-merged")] for n in merge}
    assert {r["backend"] for r in rows} == {*backends, *ir}
    assert "openvino@1" in bench["unmerged_over_merged"]["student-lora"]
    served = [r for r in bench["rows"] if r["transport"] == "http"]
    assert len(served) + len(rows) == len(bench["rows"])
    assert sorted((r["variant"], r["backend"], r["concurrency"]) for r in served) == sorted(
        (m, b, c)
        for m in ("student-lora", "student-lora-merged")
        for b in ("torch", "onnxruntime")
        for c in (1, 4)
    )
    for r in rows + served:
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["throughput"] > 0 and r["errors"] == 0
    assert set(bench["served_unmerged_over_merged"]["student-lora"]) == {
        "torch@c1",
        "torch@c4",
        "onnxruntime@c1",
        "onnxruntime@c4",
    }
    serving = bench["serving"]
    assert serving["dynamic_batching"]["model"] == "student-lora-merged"
    assert serving["dynamic_batching"]["on_over_off"] > 0
    assert serving["http_overhead"]["batch_size"] == 4
    assert 0 < serving["http_overhead"]["served_over_in_process"] < 10

    reference = _json(project, "reference.json")
    assert {r["backend"] for r in reference["rows"]} >= {*backends, "openvino-default", *ir}
    hardware = reference["hardware"]
    assert hardware["cores"] == 2 and hardware["peak_tflops"]["fp32"] > 0
    for r in reference["rows"]:  # each row's share of the peak at its own precision
        peak = hardware["peak_tflops"][r["precision"]]
        assert r["of_peak"] == pytest.approx(r["tflops"] / peak)
    within = {  # the artefacts whose top-1 held on every shipped model
        a
        for a, kind in KINDS.items()
        if all(models[m].get(f"{kind.key}_within_bound", a == "onnxruntime") for m in shipped)
    }
    for bs in ("1", "4"):  # the fastest of them, against ORT's INT8 and the peer
        best = reference["best"][bs]
        candidates = [
            r for r in reference["rows"] if r["batch_size"] == int(bs) and r["backend"] in within
        ]
        assert best["p50_ms"] == min(r["p50_ms"] for r in candidates)
        assert best["over_peer"] > 0 and best["over_onnxruntime_int8"] > 0
    # OpenVINO's counters name each layer's kernel: the INT8 IR's projections run INT8 kernels
    kernels = reference["openvino_profile_ms"]["openvino-int8"]
    assert any(k.startswith("FullyConnected") and k.lower().endswith("_i8") for k in kernels)
    assert reference["fused_ops"]["Attention"] == 12  # vit_tiny: 12 blocks
    assert reference["speedup_over_torch"]["onnxruntime-int8@1"] > 0
    assert "MatMul" in reference["profile_ms"]["onnxruntime-optimized"]
    compiled = next(r for r in reference["rows"] if r["backend"] == "torch-compile")
    assert compiled["max_abs_diff_vs_torch"] < 1e-4 and compiled["throughput"] > 0
    # vit_tiny at 32: 5 tokens; the counted FLOPs give the achieved rate
    assert 0.01 < reference["gflop_per_image"] < 0.1
    assert compiled["tflops"] == pytest.approx(
        compiled["throughput"] * reference["gflop_per_image"] / 1e3
    )

    training = _json(project, "train_benchmark.json")
    rows = {r["method"]: r for r in training["rows"]}
    assert list(rows) == ["full", "lora", "arc", "consolidator", "idat"]
    assert all(r["images_per_s"] > 0 and r["memory_source"] == "accounted" for r in rows.values())
    assert rows["full"]["params_trainable"] == rows["full"]["params_total"]
    for method in ("lora", "arc", "consolidator"):
        assert rows[method]["optimizer_mib"] < rows["full"]["optimizer_mib"]
        assert 0 < training["over_full"][method]["peak_memory"] < 1


def test_outputs_people_look_at(project):
    pngs = (
        "confusion.png",
        "benchmark.png",
        "merge_speedup.png",
        "reference.png",
        "serving.png",
        "train_benchmark.png",
    )
    for png in (f"plots/{name}" for name in pngs):
        assert (project / png).read_bytes().startswith(b"\x89PNG")
    # a chart per metric, a line per run: the variants and the distilled students on one axis
    assert sorted(p.name for p in (project / "plots/training").iterdir()) == [
        "lr.png",
        "train_loss.png",
        "val_loss.png",
        "val_top1.png",
    ]
    assert (project / "plots/pretraining/val_top1.png").read_bytes().startswith(b"\x89PNG")
    # every declared plot is a PNG: dvc plots show warns of nothing and its page needs no
    # script from the internet
    shown = _run(project, "dvc", "plots", "show", "-o", "dvc_plots")
    assert shown.returncode == 0 and not shown.stderr.strip(), shown.stderr
    page = (project / "dvc_plots/index.html").read_text()
    assert "<script" not in page
    assert page.count("<img") == len(list((project / "plots").rglob("*.png")))
    live = json.loads((project / "dvclive/train/student-lora/metrics.json").read_text())
    assert live["step"] == 1  # two epochs logged, steps 0 and 1


def test_continual_figures_and_deployable_students(project):
    report = _json(project, "continual.json")
    learners, runs = ("l2p", "dualprompt", "coda"), ("teacher", "student", "kd", "cdl")
    assert report["class_order"] == list(range(10))
    assert set(report["accuracy"]) == set(learners)
    for learner in learners:
        figures = report["accuracy"][learner]
        assert set(figures) == set(runs)
        for run in runs:
            matrix = figures[run]["accuracy_matrix"]
            assert len(matrix) == 2 and matrix[0][1] is None
            assert all(0 <= a <= 100 for a in (matrix[0][0], *matrix[1]))
            assert figures[run]["average_accuracy"] == pytest.approx(sum(matrix[1]) / 2)
            assert figures[run]["forgetting"] == pytest.approx(matrix[0][0] - matrix[1][0])
        gain = figures["cdl"]["average_accuracy"] - figures["student"]["average_accuracy"]
        assert report["cdl_over_student"][learner] == pytest.approx(gain)
    assert set(report["export"]) == {f"{lr}-{r}" for lr in learners for r in runs[1:]}
    for row in report["export"].values():
        assert row["max_abs_diff"] <= 1e-4
        assert row["top1_onnxruntime"] == pytest.approx(row["top1_torch"], abs=0.2)
    # the whole two-pass model runs from its file alone, on any batch size
    import onnxruntime as ort

    session = ort.InferenceSession(str(project / "models/continual/coda-cdl/model.onnx"))
    logits = session.run(None, {"images": torch.randn(3, 3, 16, 16).numpy()})[0]
    assert logits.shape == (3, 10) and torch.isfinite(torch.from_numpy(logits)).all()
    latency = report["latency"]
    assert {r["model"] for r in latency["rows"]} == {"plain-student", *learners}
    for learner in learners:
        for backend in ("torch", "onnxruntime"):
            assert set(latency["prompted_over_plain"][learner][backend]) == {"1", "4"}
    assert (project / "plots/continual.png").read_bytes().startswith(b"\x89PNG")
    assert not (project / "checkpoints/continual").exists()  # finished: nothing to resume


def test_merged_model_is_plain_timm(project):
    folder = project / "models/merged/student-lora-merged"
    spec = json.loads((folder / "model.json").read_text())
    model = timm.create_model(spec["arch"], num_classes=spec["num_classes"], **spec["kwargs"])
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 10)


def test_second_repro_does_nothing_and_experiments_run(project):
    again = _run(project, "dvc", "repro")
    assert again.returncode == 0
    assert "Data and pipelines are up to date" in again.stdout
    assert "Running stage" not in again.stdout

    # an experiment reruns only what its change touches: here the served study alone
    for concurrency in (2, 3):
        exp = _run(
            project,
            *("dvc", "exp", "run", "-n", f"c{concurrency}"),
            *("-S", f"benchmark.serve.concurrency=[{concurrency}]"),
        )
        assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
        assert re.findall(r"Running stage '([^']+)'", exp.stdout) == ["benchmark"]
    served = [r for r in _json(project, "benchmark.json")["rows"] if r["transport"] == "http"]
    assert served and {r["concurrency"] for r in served} == {3}

    # both experiments keep their metrics: dvc exp show reads each one's summaries back
    shown = _run(project, "dvc", "exp", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    runs = {
        exp["name"]: exp["data"]
        for commit in json.loads(shown.stdout)
        for exp in commit.get("experiments") or []
        for exp in exp["revs"]
    }
    assert {"c2", "c3"} <= set(runs)
    for concurrency in (2, 3):
        metrics = runs[f"c{concurrency}"]["metrics"]
        served = metrics["metrics/benchmark.json"]["data"]["served_images_per_s"]
        assert set(served) == {f"torch@c{concurrency}", f"onnxruntime@c{concurrency}"}
        assert all(v > 0 for v in served.values())
        top1 = metrics["metrics/evaluate.json"]["data"]["top1"]
        assert top1 == _summary(project, "evaluate.json")["top1"]  # unchanged by the experiment


def test_the_seed_study_is_its_own_stage_and_pairs_its_runs(project):
    """`dvc repro` left the study alone; run by name, it trains every run once per seed."""
    assert not (project / "reports/seeds.json").exists()
    proc = _run(project, "dvc", "repro", "studies/dvc.yaml:seeds")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.findall(r"Running stage '([^']+)'", proc.stdout) == ["studies/dvc.yaml:seeds"]
    report = _json(project, "seeds.json")
    assert report["seeds"] == [0, 1] and len(report["rows"]) == 2
    learners = ("l2p", "dualprompt", "coda")
    runs = {f"{lr}-{r}" for lr in learners for r in ("teacher", "student", "kd", "cdl")}
    wecolora = {"wecolora-lora_qkv", "wecolora-lora_qv", "wecolora-linear"}
    assert set(report["runs"]) == {"idat-baseline", "idat-mse", "idat-kl", *wecolora, *runs}
    rows = report["rows"]
    mse = [r["idat"]["mse"]["top1"] - r["idat"]["baseline"]["top1"] for r in rows]
    paired = report["paired"]["idat_mse_minus_baseline"]
    assert paired["per_seed"] == pytest.approx(mse)
    assert paired["mean"] == pytest.approx(sum(mse) / 2)
    assert paired["std"] == pytest.approx(abs(mse[0] - mse[1]) / 2**0.5)
    copy = [r["wecolora"]["lora_qkv"]["top1"] - r["wecolora"]["linear"]["top1"] for r in rows]
    assert report["paired"]["wecolora_lora_qkv_minus_linear"]["per_seed"] == pytest.approx(copy)
    assert "wecolora_lora_qkv_minus_lora_qv" in report["paired"]
    coda = [r["continual"]["coda-cdl"] - r["continual"]["coda-student"] for r in rows]
    assert report["paired"]["coda_cdl_minus_student"]["per_seed"] == pytest.approx(coda)
    assert report["idat_kd_by_val"] in ("mse", "kl")
    # the seeds differ: two runs of one seed would give a zero spread everywhere
    assert any(v["std"] > 0 for v in report["runs"].values())
    summary = _summary(project, "seeds.json")
    assert summary["mean"]["idat-mse"] == pytest.approx(report["runs"]["idat-mse"]["mean"], 1e-3)
    assert summary["study"] == {"seeds": 2, "idat_kd_by_val": report["idat_kd_by_val"]}
    assert (project / "plots/seeds.png").stat().st_size > 10_000
    assert not (project / "checkpoints/seeds").exists()  # nothing left to resume


def test_a_code_change_marks_exactly_the_stages_it_affects(project):
    """The normalisation constants feed the loaders of training, so every training stage (and
    what reads images) is changed; the stages that never import them are not."""
    transforms = project / "pipeline/data/transforms.py"
    original = transforms.read_text()
    assert "MEAN = " in original
    transforms.write_text(original.replace("MEAN = ", "MEAN = 0.25, 0.25, 0.25  # was ", 1))
    try:
        status = _run(project, "dvc", "status", "--json", "dvc.yaml")
        assert status.returncode == 0, status.stderr
        changed = {
            stage
            for stage, entries in json.loads(status.stdout).items()
            if any("changed deps" in e for e in entries if isinstance(e, dict))
        }
    finally:
        transforms.write_text(original)
    assert {"train@student-lora", "train@teacher-lora", "distill", "backbone@student"} <= changed
    assert {"merge", "export", "evaluate", "benchmark", "continual"} <= changed
    assert "train_benchmark" in changed  # its loop imports the loaders
    clean = _run(project, "dvc", "status", "--json", "dvc.yaml")
    assert json.loads(clean.stdout) == {}, "restoring the file restores the lock's state"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"data": {"source": "imagefolder", "path": "/no/such/folder"}},
            "error: data.path: ImageFolder root '/no/such/folder' does not exist or is not a "
            "folder",
        ),
        ({"train": {"lr": -1}}, "error: train.lr must be > 0, got -1"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, changes, message):
    project = _project(tmp_path, **changes)
    proc = _run(project, sys.executable, "-m", "stages.prepare")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [message]
