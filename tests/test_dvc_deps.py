"""dvc.yaml's `deps` cover every project module a stage's command imports, so a code change can
never leave `dvc repro` saying "up to date" over outputs the new code would not produce; and the
committed dvc.lock is the one that code and params.yaml made."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "serve", "stages")
COMMAND_MODULE = re.compile(rf"\b(?:{'|'.join(PACKAGES)})(?:\.\w+)+\b")


def module_file(name: str) -> Path | None:
    """The source file of a project module, or None for anything else."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path) -> set[str]:
    """Every module an import statement anywhere in `path` names (function-level ones too,
    since they run when the function does), and the packages above each."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # a submodule, if it is one
    return {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)}


def closure(modules: list[str]) -> set[Path]:
    """The files of every project module the given modules import, transitively."""
    seen: set[Path] = set()
    todo = [f for m in modules for f in [module_file(m)] if f]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += [f for name in _imports(path) if (f := module_file(name)) and f not in seen]
    return seen


def _stages() -> dict[str, dict]:
    """The pipeline's stages and the studies' (their `wdir` is the project root)."""
    studies = yaml.safe_load((ROOT / "studies/dvc.yaml").read_text())["stages"]
    assert all(s.get("wdir") == ".." for s in studies.values())
    root = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return root | {f"studies:{name}": stage for name, stage in studies.items()}


def _spec(stage: dict) -> dict:
    return stage.get("do", stage)


def uncovered(stage: dict) -> list[str]:
    spec = _spec(stage)
    modules = COMMAND_MODULE.findall(spec["cmd"])
    deps = [ROOT / d for d in spec.get("deps", []) if isinstance(d, str)]
    files = closure(modules)
    return sorted(
        str(f.relative_to(ROOT)) for f in files if not any(f == d or d in f.parents for d in deps)
    )


@pytest.mark.parametrize("name", list(_stages()))
def test_stage_deps_cover_every_module_its_command_imports(name):
    stage = _stages()[name]
    assert COMMAND_MODULE.findall(_spec(stage)["cmd"]), f"{name}: no project module in its cmd"
    missing = uncovered(stage)
    assert not missing, f"{name}: add to its deps in dvc.yaml: {', '.join(missing)}"


@pytest.mark.parametrize("name", list(_stages()))
def test_stage_commands_exec_so_the_stage_is_dvcs_own_child(name):
    """DVC runs a command through `$SHELL -c`; dash (/bin/sh here) forks rather than execs, and
    a stage whose parent is the shell would outlive a killed dvc (see pipeline.cli)."""
    assert _spec(_stages()[name])["cmd"].startswith("exec python -m "), name


def test_the_import_walk_finds_lazy_and_relative_imports(tmp_path):
    """The walk itself: the training stage reaches the data loader through the training loop,
    and the server's launcher reaches the server's entry point."""
    train = closure(["stages.train"])
    assert ROOT / "pipeline/data/transforms.py" in train
    assert ROOT / "pipeline/train/loop.py" in train
    assert ROOT / "serve/__main__.py" in closure(["serve.launch"])
    assert module_file("numpy") is None and module_file("pipeline.nonexistent") is None


def test_the_committed_lock_is_true_to_the_code_and_params():
    """`dvc status` compares each stage's code deps and params with the hashes dvc.lock holds.
    Data and outputs (absent from a clone, or made since) do not count: only what git tracks.
    The pipeline's lock only: a study's (studies/dvc.lock) holds the code it last ran with."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    tracked = set(
        subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.splitlines()
    )
    proc = subprocess.run(
        [Path(sys.executable).parent / "dvc", "status", "--json", "dvc.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    stale = []
    for stage, entries in json.loads(proc.stdout).items():
        for entry in entries:
            if isinstance(entry, str):  # "changed command", "always changed"
                stale.append(f"{stage}: {entry}")
                continue
            for path, change in entry.get("changed deps", {}).items():
                is_code = path in tracked or any(t.startswith(f"{path}/") for t in tracked)
                if isinstance(change, dict) or (is_code and change != "deleted"):
                    stale.append(f"{stage}: {path} {change}")
    assert not stale, "dvc.lock is stale, run `make repro` and commit it:\n" + "\n".join(stale)
