"""Presets: params.yaml overrides that reproduce a published setting, run as a DVC experiment.

    python -m pipeline.preset configs/vtab-arc.yaml --data /data/vtab-1k/caltech101

A preset is nested like params.yaml. Its sections (the mappings params.yaml's schema defines:
data, train, distill.wecolora, ...) merge key by key; every other value (numbers, strings, lists,
and the free-form mappings backbone, a role's kwargs, adapters, train.method_lr,
distill.wecolora.recipe) replaces params.yaml's whole, so a preset states a backbone or a recipe
completely. The merged params are validated like params.yaml, then run with
`dvc exp run -S ...`: params.yaml in git is left as it is.
"""

from __future__ import annotations

import argparse
import copy
import re
import shlex
import shutil
import subprocess
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from pipeline.cli import run_stage
from pipeline.config import ConfigError, Params, key_value, parse_params

DATA_FOLDERS = {  # data.source: what --data names, and how it looks
    "vtab": ("VTAB-1K task folder", "e.g. vtab-1k/dtd: train800val200.txt, test.txt"),
    "imagefolder": ("ImageNet-style folder", "root/<class>/<image>"),
}


def _sections(cls: type[BaseModel]) -> dict[str, dict]:
    """The schema's nested sections: fields whose type is itself a model."""
    return {
        name: _sections(f.annotation)
        for name, f in cls.model_fields.items()
        # without get_origin, Python 3.10 takes a generic alias (dict[str, X]) for a class
        if isinstance(f.annotation, type)
        and not typing.get_origin(f.annotation)
        and issubclass(f.annotation, BaseModel)
    }


SECTIONS = _sections(Params)


def apply(base: dict[str, Any], preset: dict[str, Any], sections: dict = SECTIONS) -> dict:
    """`base` with `preset` applied: sections merge key by key, any other value replaces."""
    out = copy.deepcopy(base)
    for key, value in preset.items():
        if key in sections and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = apply(out[key], value, sections[key])
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested mapping, creating the mappings on the way."""
    *path, last = key.split(".")
    for part in path:
        node = tree.get(part)
        if not isinstance(node, dict):
            node = tree[part] = {}
        tree = node
    tree[last] = value


_PLAIN = re.compile(r"[A-Za-z_/][\w./-]*")
_KEYWORDS = {"null", "true", "false", "nan", "inf"}


def _value(value: Any) -> str:
    """A value in the override grammar of `dvc exp run -S` (Hydra's): YAML-like flow style."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _KEYWORDS:
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(map(_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot pass {value!r} ({type(value).__name__}) to dvc exp run -S")


def overrides(base: dict[str, Any], target: dict[str, Any], prefix: str = "") -> list[str]:
    """`-S` arguments that turn `base` into `target`: `key=value` for a changed value,
    `+key=value` for a new one, `~key` for one `target` lacks (dvc merges mappings given whole,
    so a mapping that changes is written key by key)."""
    out = []
    for key in base:
        if key not in target:
            out.append(f"~{prefix}{key}")
    for key, value in target.items():
        dotted = f"{prefix}{key}"
        old = base.get(key)
        if key in base and isinstance(old, dict) and isinstance(value, dict):
            out += overrides(old, value, f"{dotted}.")
        elif key not in base:
            out.append(f"+{dotted}={_value(value)}")
        elif old != value:
            if isinstance(old, dict) or isinstance(value, dict):  # a mapping and a plain value
                out += [f"~{dotted}", f"+{dotted}={_value(value)}"]
            else:
                out.append(f"{dotted}={_value(value)}")
    return out


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} is a mapping of params.yaml keys")
    return data


def resolve(
    preset: str | Path,
    *,
    data: str | None = None,
    weights: Sequence[str] = (),
    sets: Sequence[str] = (),
    params_file: str | Path = "params.yaml",
) -> tuple[dict[str, Any], Params]:
    """The params a preset runs with, as a mapping like params.yaml and validated.

    `sets` are `key=value` (YAML values) written into the preset before it applies; `data` is
    data.path and each of `weights` is `ROLE=PATH`, a local checkpoint for that role.
    """
    tree = read_yaml(preset, "preset")
    for text in sets:
        key, value = key_value(text, "--set")
        try:
            set_dotted(tree, key, yaml.safe_load(value))
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: not a YAML value: {value!r}") from None
    target = apply(read_yaml(params_file, "params file"), tree)
    if data is not None:
        set_dotted(target, "data.path", str(Path(data).resolve()))
    roles = target.get("backbone") if isinstance(target.get("backbone"), dict) else {}
    for text in weights:
        role, path = key_value(text, "--weights")
        if not isinstance(roles.get(role), dict):
            raise ConfigError(
                f"--weights: role '{role}' has no backbone in {preset} "
                f"(roles: {', '.join(roles) or 'none'})"
            )
        if not Path(path).is_file():
            raise ConfigError(f"--weights {role}: checkpoint file '{path}' not found")
        roles[role]["weights"] = str(Path(path).resolve())
    return target, parse_params(target)  # parse_params checks benchmark.serve.variants too


def check_data(params: Params) -> None:
    """A preset on real data needs its folder: a one-line error says which."""
    if params.data.source not in DATA_FOLDERS:
        if params.data.path:
            raise ConfigError(f"--data: data.source {params.data.source} reads no folder")
        return
    what, looks = DATA_FOLDERS[params.data.source]
    if not params.data.path:
        raise ConfigError(f"--data: give the {what} ({looks})")
    if not Path(params.data.path).is_dir():
        raise ConfigError(f"--data: {what} '{params.data.path}' does not exist or is not a folder")


def command(name: str, args: list[str], targets: Sequence[str] = ()) -> list[str]:
    """The `dvc exp run` command line of an experiment."""
    return ["dvc", "exp", "run", "-n", name, *(a for o in args for a in ("-S", o)), *targets]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.preset",
        description="Validate a preset and run it as a DVC experiment (dvc exp run -S ...).",
    )
    parser.add_argument("preset", help="a YAML file of params.yaml overrides, e.g. configs/*.yaml")
    parser.add_argument("--data", help="the task's folder: VTAB-1K task or ImageNet-style root")
    parser.add_argument(
        "--weights", action="append", default=[], metavar="ROLE=PATH", help="local checkpoint"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a further override"
    )
    parser.add_argument("--name", help="experiment name (default: preset and data folder)")
    parser.add_argument(
        "--target", action="append", default=[], help="run only this stage and what it needs"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the dvc command only")
    args = parser.parse_args(argv)
    base = read_yaml("params.yaml", "params file")
    target, params = resolve(args.preset, data=args.data, weights=args.weights, sets=args.set)
    check_data(params)
    name = args.name or "-".join(
        [Path(args.preset).stem, *([Path(args.data).resolve().name] if args.data else [])]
    )
    cmd = command(name, overrides(base, target), args.target)
    if args.dry_run:
        print(shlex.join(cmd))
        return
    cmd[0] = shutil.which("dvc", path=str(Path(sys.executable).parent)) or "dvc"
    sys.exit(subprocess.run(cmd).returncode)


if __name__ == "__main__":
    run_stage(main)
