"""PNG figures people look at instead of reading JSON."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pipeline.io import atomic_dir, atomic_path


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def _save(fig: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def confusion_grid(matrices: dict[str, np.ndarray], classes: list[str], path: str | Path) -> None:
    """One confusion matrix per variant, rows = true class, columns = prediction."""
    n = len(matrices)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.5 * rows), squeeze=False)
    for ax, (name, cm) in zip(axes.flat, matrices.items()):
        acc = np.trace(cm) / max(1, cm.sum()) * 100
        ax.imshow(cm, cmap="Blues")
        ax.set_title(f"{name}\ntop-1 {acc:.1f}%", fontsize=9)
        ticks = range(len(classes))
        ax.set_xticks(ticks, classes, fontsize=7)
        ax.set_yticks(ticks, classes, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        if len(classes) <= 12:
            for (i, j), v in np.ndenumerate(cm):
                if v:
                    ax.text(
                        j,
                        i,
                        v,
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if v > cm.max() / 2 else "black",
                    )
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    _save(fig, path)


def latency_bars(rows: list[dict], path: str | Path) -> None:
    """Per batch size: p50 latency (bar) with p95-p99 whiskers, per model and backend."""
    batch_sizes = sorted({r["batch_size"] for r in rows})
    backends = sorted({r["backend"] for r in rows})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(
        1, len(batch_sizes), figsize=(6 * len(batch_sizes), 0.5 * len(variants) + 2), squeeze=False
    )
    height = 0.8 / len(backends)
    for ax, bs in zip(axes.flat, batch_sizes):
        for k, backend in enumerate(backends):
            sel = {
                r["variant"]: r for r in rows if r["batch_size"] == bs and r["backend"] == backend
            }
            ys = [i + k * height for i, v in enumerate(variants) if v in sel]
            p50 = [sel[v]["p50_ms"] for v in variants if v in sel]
            err = [
                [0] * len(p50),
                [sel[v]["p99_ms"] - sel[v]["p50_ms"] for v in variants if v in sel],
            ]
            ax.barh(ys, p50, height, xerr=err, label=backend, capsize=2)
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(variants))], variants, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("latency ms (bar p50, whisker to p99)")
        ax.set_title(f"batch {bs}")
        ax.legend(fontsize=8)
    _save(fig, path)


def throughput_bars(rows: list[dict], path: str | Path, highlight: dict[str, str]) -> None:
    """Per batch size: images/s at the p50 latency of every backend of one model (the order
    `best` ranks by), fastest on top, each bar labelled with its precision and share of the
    peak; `highlight` colours named backends (the best, the baselines) and names them."""
    batch_sizes = sorted({r["batch_size"] for r in rows})
    n = len({r["backend"] for r in rows})
    fig, axes = plt.subplots(
        1, len(batch_sizes), figsize=(7 * len(batch_sizes), 0.35 * n + 1.5), squeeze=False
    )
    colours = dict(zip(highlight, plt.rcParams["axes.prop_cycle"].by_key()["color"][1:]))
    for ax, bs in zip(axes.flat, batch_sizes):
        sel = sorted((r for r in rows if r["batch_size"] == bs), key=lambda r: -r["p50_ms"])
        names = [r["backend"] for r in sel]
        bars = ax.barh(names, [bs * 1e3 / r["p50_ms"] for r in sel], color="lightgrey")
        for bar, r in zip(bars, sel):
            if r["backend"] in colours:
                bar.set_color(colours[r["backend"]])
            share = f", {r['of_peak']:.0%} of peak" if "of_peak" in r else ""
            ax.annotate(f" {r.get('precision', '')}{share}", (bar.get_width(), bar.get_y()),
                        fontsize=7, va="bottom")  # fmt: skip
        ax.tick_params(axis="y", labelsize=8)
        ax.set_xlabel("images/s at the p50 latency")
        ax.set_title(f"batch {bs}")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    axes.flat[0].legend(handles, [f"{k}: {v}" for k, v in highlight.items()], fontsize=7)
    _save(fig, path)


def ratio_bars(ratios: dict[str, dict[str, float]], path: str | Path) -> None:
    """Unmerged / merged latency per model, one bar per backend@batch: the cost of not merging."""
    names = list(ratios)
    keys = sorted({k for r in ratios.values() for k in r})
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names) * len(keys) / 2), 4))
    width = 0.8 / max(1, len(keys))
    for k, key in enumerate(keys):
        xs = [i + k * width for i, n in enumerate(names) if key in ratios[n]]
        ax.bar(xs, [ratios[n][key] for n in names if key in ratios[n]], width, label=key)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(names))], names, rotation=30, ha="right", fontsize=8
    )
    ax.set_ylabel("p50 latency unmerged / merged")
    ax.set_title("what not merging costs")
    ax.legend(fontsize=7)
    _save(fig, path)


def latency_throughput(rows: list[dict], path: str | Path, title: str = "") -> None:
    """Served load as perf_analyzer plots it: p50 latency (whisker to p99) against throughput,
    one point per client concurrency; a panel per backend, a colour per variant, its merged
    form solid and its unmerged form dashed."""
    backends = list(dict.fromkeys(r.get("backend", "") for r in rows))
    bases = list(dict.fromkeys(r["model"].removesuffix("-merged") for r in rows))
    colours = {b: f"C{i % 10}" for i, b in enumerate(bases)}
    fig, axes = plt.subplots(
        1, len(backends), figsize=(6.5 * len(backends), 5), squeeze=False, sharey=True
    )
    for ax, backend in zip(axes.flat, backends):
        series: dict[str, list[dict]] = {}
        for r in rows:
            if r.get("backend", "") == backend:
                series.setdefault(r["model"], []).append(r)
        for model, points in series.items():
            points = sorted(points, key=lambda r: r["concurrency"])
            base = model.removesuffix("-merged")
            unmerged = base == model and f"{model}-merged" in series
            xs = [p["throughput"] for p in points]
            ys = [p["p50_ms"] for p in points]
            err = [[0] * len(points), [p["p99_ms"] - p["p50_ms"] for p in points]]
            ax.errorbar(
                xs,
                ys,
                yerr=err,
                marker="o",
                capsize=2,
                label=model,
                color=colours[base],
                linestyle="--" if unmerged else "-",
            )
            for p, x, y in zip(points, xs, ys):
                ax.annotate(
                    f"c{p['concurrency']}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                    color=colours[base],
                )
        ax.set_xlabel("throughput (images/s)")
        ax.set_title(backend)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes.flat[0].set_ylabel("latency ms (p50, whisker to p99)")
    fig.suptitle(title or "latency against throughput by client concurrency")
    _save(fig, path)


def continual_curves(results: dict[str, dict[str, dict]], path: str | Path) -> None:
    """Average accuracy over the tasks seen so far, after each task: a panel per prompt
    learner, a line per run (teacher, student alone, with KD, with CDL-Prompt)."""
    fig, axes = plt.subplots(
        1, len(results), figsize=(4.5 * len(results), 4), squeeze=False, sharey=True
    )
    for ax, (learner, runs) in zip(axes.flat, results.items()):
        for run, figures in runs.items():
            curve = [
                np.mean([a for a in row if a is not None]) for row in figures["accuracy_matrix"]
            ]
            ax.plot(range(1, len(curve) + 1), curve, marker="o", label=run)
        ax.set_title(learner)
        ax.set_xlabel("tasks learnt")
        ax.set_xticks(range(1, len(curve) + 1))
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes.flat[0].set_ylabel("average accuracy over tasks seen (%)")
    fig.suptitle("class-incremental: average accuracy after each task")
    _save(fig, path)


def seed_bars(report: dict, path: str | Path) -> None:
    """The seed study: mean ± std (error bars) over seeds of iDAT's and WeCoLoRA's runs (test
    top-1) and of each learner's continual runs (class-incremental average accuracy), a panel
    each."""
    runs = report["runs"]
    groups = list(dict.fromkeys(k.split("-")[0] for k in runs))
    titles = {"idat": "iDAT (test top-1)", "wecolora": "WeCoLoRA (test top-1)"}
    panels = {
        titles.get(group, f"{group} (CIL average accuracy)"): [
            k for k in runs if k.startswith(f"{group}-")
        ]
        for group in groups
    }
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4), squeeze=False)
    for ax, (title, names) in zip(axes.flat, panels.items()):
        means = [runs[n]["mean"] for n in names]
        stds = [runs[n]["std"] for n in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(names)), [n.split("-", 1)[1] for n in names], rotation=30)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes.flat[0].set_ylabel("percent")
    fig.suptitle(f"over {len(report['seeds'])} seeds: mean ± std")
    _save(fig, path)


MEMORY_PARTS = ("weights", "gradients", "optimizer", "activations")


def training_costs(rows: list[dict], path: str | Path) -> None:
    """Per training method: images/s, and memory as stacked parts (weights, gradients,
    optimizer state, saved activations) with the CUDA allocator's peak marked where measured."""
    methods = [r["method"] for r in rows]
    ys = np.arange(len(methods))
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 0.45 * len(methods) + 1.8))
    speed.barh(ys, [r["images_per_s"] for r in rows], color="tab:blue")
    speed.set_xlabel("training images/s (higher is better)")
    left = np.zeros(len(rows))
    for part in MEMORY_PARTS:
        values = np.array([r[f"{part}_mib"] for r in rows])
        memory.barh(ys, values, left=left, label=part)
        left += values
    measured = [r for r in rows if r["memory_source"] != "accounted"]
    if measured:
        memory.plot(
            [r["peak_memory_mib"] for r in measured],
            [methods.index(r["method"]) for r in measured],
            "k|",
            markersize=14,
            label="allocator peak",
        )
    memory.set_xlabel("memory MiB")
    memory.legend(fontsize=7)
    for ax in (speed, memory):
        ax.set_yticks(ys, methods)
        ax.invert_yaxis()
    fig.suptitle("training cost per method against full fine-tuning")
    _save(fig, path)


def _curves(run: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A dvclive run's logged metrics: {"val/top1": (steps, values)} from its plots/metrics TSVs."""
    root = run / "plots" / "metrics"
    out = {}
    for tsv in sorted(root.rglob("*.tsv")):
        table = np.genfromtxt(tsv, delimiter="\t", names=True, dtype=float, ndmin=1)
        step, value = table.dtype.names[:2]
        out[tsv.relative_to(root).with_suffix("").as_posix()] = (table[step], table[value])
    return out


def training_curves(runs: dict[str, Path], folder: str | Path, title: str) -> None:
    """One PNG per logged metric (`val_top1.png`, ...), a line per run: the variants compared on
    the same axes instead of one small chart per run."""
    by_metric: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for name, run in runs.items():
        for metric, curve in _curves(run).items():
            by_metric.setdefault(metric, {})[name] = curve
    with atomic_dir(folder) as tmp:
        for metric, curves in by_metric.items():
            fig, ax = plt.subplots(figsize=(7.5, 4.5))
            for i, (name, (steps, values)) in enumerate(curves.items()):
                style = ("-", "--", ":")[i // 10 % 3]  # ten colours, then dashes: 30 runs apart
                ax.plot(steps, values, label=name, color=f"C{i % 10}", ls=style)
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            ax.set_title(f"{title}: {metric}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
            _save(fig, tmp / f"{metric.replace('/', '_')}.png")
