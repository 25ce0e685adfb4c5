"""VTAB-1K's tasks and groups, the summary of a run, and its table as the papers print it."""

from __future__ import annotations

from typing import Any

# Folder names of the common VTAB-1K release (vtab-1k/<task>/train800val200.txt), with the
# column labels the papers use, in the papers' order.
GROUPS: dict[str, dict[str, str]] = {
    "Natural": {
        "cifar": "CIFAR-100",
        "caltech101": "Caltech101",
        "dtd": "DTD",
        "oxford_flowers102": "Flowers102",
        "oxford_iiit_pet": "Pets",
        "svhn": "SVHN",
        "sun397": "Sun397",
    },
    "Specialized": {
        "patch_camelyon": "Camelyon",
        "eurosat": "EuroSAT",
        "resisc45": "Resisc45",
        "diabetic_retinopathy": "Retinopathy",
    },
    "Structured": {
        "clevr_count": "Clevr-Count",
        "clevr_dist": "Clevr-Dist",
        "dmlab": "DMLab",
        "kitti": "KITTI-Dist",
        "dsprites_loc": "dSpr-Loc",
        "dsprites_ori": "dSpr-Ori",
        "smallnorb_azi": "sNORB-Azim",
        "smallnorb_ele": "sNORB-Elev",
    },
}
TASKS: list[str] = [task for tasks in GROUPS.values() for task in tasks]
GROUP_OF: dict[str, str] = {task: g for g, tasks in GROUPS.items() for task in tasks}

# Reference data, not results of this project: the published VTAB-1K figures (ViT-B/16 on
# ImageNet-21k, top-1 %) of ARC (its paper) and of Consolidator's table, which also quotes the
# other rows, of those only the mean of the three group means.
PUBLISHED: dict[str, dict[str, float]] = {
    "ARC": {"Natural": 81.6, "Specialized": 85.8, "Structured": 60.0, "Mean": 75.8},
    "Consolidator": {"Natural": 82.4, "Specialized": 86.3, "Structured": 60.9, "Mean": 76.53},
    "Full fine-tuning": {"Mean": 68.97},
    "Adapter": {"Mean": 74.28},
    "LoRA": {"Mean": 74.64},
    "AdaptFormer": {"Mean": 74.82},
    "NOAH": {"Mean": 75.48},
    "SSF": {"Mean": 75.69},
}
# the published row of a method of this project, listed first beside its run
PUBLISHED_ROW = {"arc": "ARC", "consolidator": "Consolidator", "lora": "LoRA", "ssf": "SSF"}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Group means over the finished tasks of each group, and the mean of the three group
    means (once every group has a finished task)."""
    groups = {}
    for group, members in GROUPS.items():
        done = [tasks[t]["top1"] for t in members if t in tasks]
        groups[group] = {"mean": _mean(done), "tasks": len(done), "of": len(members)}
    means = [g["mean"] for g in groups.values()]
    return {
        "groups": groups,
        "mean": None if None in means else _mean(means),
        "complete": all(t in tasks for t in TASKS),
    }


def _cell(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(method: str, tasks: dict[str, dict[str, Any]], summary: dict, about: str) -> str:
    """The run's row beside the published ones: a column per task, each group's mean after its
    tasks, then the mean of the three group means."""
    header, run = ["Method"], [f"{method} (this run)"]
    for group, members in GROUPS.items():
        header += [*members.values(), f"**{group}**"]
        run += [_cell(tasks[t]["top1"]) if t in tasks else "" for t in members]
        run.append(_cell(summary["groups"][group]["mean"]))
    header.append("**Mean**")
    run.append(_cell(summary["mean"], 2))
    rows = [run]
    own = PUBLISHED_ROW.get(method)
    for name in sorted(PUBLISHED, key=lambda n: n != own):
        figures = PUBLISHED[name]
        row = [f"{name} (published)"]
        for group, members in GROUPS.items():
            row += [""] * len(members) + [str(figures.get(group, ""))]
        rows.append([*row, str(figures["Mean"])])
    lines = [
        f"# VTAB-1K: {method}",
        "",
        about,
        "",
        "| " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        "Published rows are the papers' figures (ViT-B/16, ImageNet-21k), quoted for comparison: "
        "ARC from its paper, the others from Consolidator's table; blank where only the mean is "
        "quoted.",
    ]
    partial = [
        f"{g} {s['tasks']}/{s['of']}" for g, s in summary["groups"].items() if s["tasks"] < s["of"]
    ]
    if partial:
        lines.append(
            f"This run's group means average the tasks that finished ({', '.join(partial)})."
        )
    return "\n".join(lines) + "\n"
