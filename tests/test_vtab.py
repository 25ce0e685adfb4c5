"""The VTAB-1K runner on a tiny stand-in of the VTAB-1K layout: results, table, resume, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import vtab
from experiments.vtab_table import GROUPS, TASKS, markdown, summarise
from pipeline import PipelineError

ROOT = Path(__file__).resolve().parents[1]
# two Natural tasks, one of each other group; each its own number of classes, so that even
# chance-level figures differ from task to task
CLASSES = {"cifar": 2, "dtd": 3, "eurosat": 4, "kitti": 5}
TASKS_RUN = list(CLASSES)
TINY = [  # configs/vtab-arc.yaml at a size that trains in seconds
    "data.image_size=16",
    "backbone.student={arch: vit_tiny_patch16_224, weights: none,"
    " kwargs: {patch_size: 8, embed_dim: 16, depth: 1, num_heads: 2}}",
    "train.epochs=1",
    "train.warmup_epochs=0",
    "train.batch_size=8",
]


@pytest.fixture
def workdir(tmp_path, monkeypatch, vtab_task) -> Path:
    """A project root (params.yaml, where checkpoints go) beside a tiny vtab-1k folder."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    for seed, (task, classes) in enumerate(CLASSES.items()):
        vtab_task(tmp_path / "vtab-1k" / task, classes=classes, seed=seed)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _argv(*extra: str) -> list[str]:
    sets = [a for s in TINY for a in ("--set", s)]
    preset = ("--preset", str(ROOT / "configs/vtab-arc.yaml"))
    return ["--root", "vtab-1k", "--method", "arc", *preset, "--out", "out", *sets, *extra]


FIT = vtab.fit


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("|")[1:-1]]


class Crash(RuntimeError):
    pass


def _counting_fit(monkeypatch, crash_at: int | None = None) -> list[str]:
    """Record each task `fit` trains; raise on call number `crash_at` (a killed run)."""
    calls: list[str] = []

    def fit(*args, **kwargs):
        calls.append(kwargs["desc"])
        if crash_at is not None and len(calls) == crash_at:
            raise Crash(kwargs["desc"])
        return FIT(*args, **kwargs)

    monkeypatch.setattr(vtab, "fit", fit)
    return calls


def test_runs_tasks_saves_each_and_resumes(workdir, monkeypatch):
    calls = _counting_fit(monkeypatch, crash_at=3)
    with pytest.raises(Crash):
        vtab.main(_argv("--tasks", *TASKS_RUN))
    saved = json.loads((workdir / "out/arc.json").read_text())
    assert list(saved["tasks"]) == ["cifar", "dtd"]  # the crash lost only the running task

    calls = _counting_fit(monkeypatch)
    vtab.main(_argv("--tasks", *TASKS_RUN))
    assert calls == ["arc eurosat", "arc kitti"]  # finished tasks are skipped
    report = json.loads((workdir / "out/arc.json").read_text())
    tasks = report["tasks"]
    assert list(tasks) == TASKS_RUN
    for name, row in tasks.items():
        assert 0 <= row["top1"] <= 100 and row["group"] == vtab.GROUP_OF[name]
        k = CLASSES[name]
        assert (row["train_images"], row["test_images"], row["classes"]) == (6 * k, 2 * k, k)
        assert row["settings"]["recipe"]["epochs"] == 1
    groups = report["groups"]
    natural = (tasks["cifar"]["top1"] + tasks["dtd"]["top1"]) / 2
    assert groups["Natural"] == {"mean": pytest.approx(natural), "tasks": 2, "of": 7}
    assert groups["Specialized"]["mean"] == pytest.approx(tasks["eurosat"]["top1"])
    assert groups["Structured"]["mean"] == pytest.approx(tasks["kitti"]["top1"])
    means = [natural, tasks["eurosat"]["top1"], tasks["kitti"]["top1"]]
    assert report["mean"] == pytest.approx(sum(means) / 3)
    assert report["complete"] is False

    table = (workdir / "out/arc.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| Method"))
    assert header.split(" | ")[1:3] == ["CIFAR-100", "Caltech101"]
    assert header.endswith("| **Structured** | **Mean** |")
    rows = [line for line in table if line.startswith("| ") and "---" not in line][1:]
    ours = _cells(rows[0])
    assert ours[0] == "arc (this run)" and len(ours) == len(_cells(header))
    assert ours[1] == f"{tasks['cifar']['top1']:.1f}" and ours[2] == ""
    assert ours[8] == f"{natural:.1f}" and ours[-1] == f"{report['mean']:.2f}"
    published = _cells(rows[1])  # its own published row comes first
    blanks = {group: [""] * len(members) for group, members in GROUPS.items()}
    assert published == [
        "ARC (published)",
        *blanks["Natural"],
        "81.6",
        *blanks["Specialized"],
        "85.8",
        *blanks["Structured"],
        "60.0",
        "75.8",
    ]
    assert any(r.startswith("| Consolidator (published) |") and "76.53" in r for r in rows)
    assert any(r.startswith("| Full fine-tuning (published) |") and "68.97" in r for r in rows)
    assert any("Natural 2/7" in line for line in table)

    calls = _counting_fit(monkeypatch, crash_at=1)  # nothing left to train: no call
    vtab.main(_argv("--tasks", *TASKS_RUN))
    assert calls == []

    calls = _counting_fit(monkeypatch)  # other settings retrain the task they run, only
    vtab.main(_argv("--tasks", "dtd", "--set", "train.epochs=2"))
    assert calls == ["arc dtd"]
    again = json.loads((workdir / "out/arc.json").read_text())["tasks"]
    assert again["dtd"]["settings"]["recipe"]["epochs"] == 2
    assert again["cifar"] == tasks["cifar"]


def test_summary_and_table_from_given_figures():
    figures = {t: {"top1": float(i)} for i, t in enumerate(TASKS)}
    summary = summarise(figures)
    expected = {g: sum(map(TASKS.index, tasks)) / len(tasks) for g, tasks in GROUPS.items()}
    assert {g: s["mean"] for g, s in summary["groups"].items()} == pytest.approx(expected)
    assert summary["mean"] == pytest.approx(sum(expected.values()) / 3)
    assert summary["complete"] is True
    assert summarise({"cifar": {"top1": 50.0}})["mean"] is None  # a group without any task
    table = markdown("lora", figures, summary, "about")
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert _cells(rows[2])[:3] == ["lora (this run)", "0.0", "1.0"]
    assert _cells(rows[3]) == ["LoRA (published)", *[""] * 22, "74.64"]
    assert "finished" not in table  # every group complete


def test_missing_task_folder_is_one_line(tmp_path):
    (tmp_path / "cifar").mkdir()
    argv = ["--root", str(tmp_path), "--method", "arc", "--tasks", "cifar", "svhn"]
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.vtab", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: --root: no VTAB-1K task folder '{tmp_path / 'svhn'}' (<root>/<task> holding "
        "train800val200.txt and test.txt; --tasks runs a subset)"
    ]


def test_preset_without_the_method_is_an_error(workdir):
    argv = _argv("--tasks", "cifar")
    argv[argv.index("--method") + 1] = "ssf"
    with pytest.raises(PipelineError, match=r"train.variants has no ssf variant"):
        vtab.main(argv)
