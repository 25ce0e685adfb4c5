"""Reading params.yaml: the schema's validation, then the checks across sections; any problem is
one ConfigError line naming its dotted key, so a typo fails at once instead of deep in a stage."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from pipeline.config.schema import ConfigError, Params, TrainConfig

M = TypeVar("M", bound=BaseModel)

# pydantic's type errors (strict mode raises only these) as the value expected
_EXPECTED = {
    "int_type": "an integer",
    "bool_type": "true or false",
    "float_type": "float",
    "string_type": "str",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
}


def _dotted(prefix: str, loc: tuple[int | str, ...]) -> str:
    key = prefix
    for part in loc:
        if isinstance(part, int):  # a list index
            key += f"[{part}]"
        else:
            key = f"{key}.{part}" if key else str(part)
    return key or "params"


def _known(cls: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys of the section at `loc`: down model fields, mapping values and list items."""
    tp: Any = cls
    for part in loc:
        if typing.get_origin(tp) in (dict, list):
            tp = typing.get_args(tp)[-1]
        else:
            tp = tp.model_fields[part].annotation
    return list(tp.model_fields)


def _message(cls: type[BaseModel], error: ErrorDetails, prefix: str) -> str:
    loc, kind = error["loc"], error["type"]
    key = _dotted(prefix, loc)
    if kind == "extra_forbidden":
        return f"{key}: unknown key (known: {', '.join(_known(cls, loc[:-1]))})"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "value_error":  # a field check of the schema: its message, and the value given
        return f"{key} {error['ctx']['error']}, got {error['input']!r}"
    if kind in _EXPECTED:
        return f"{key}: expected {_EXPECTED[kind]}, got {error['input']!r}"
    return f"{key}: {error['msg']}"


def validate(cls: type[M], data: Any, prefix: str) -> M:
    """`cls` from `data`, or one ConfigError naming the dotted key (under `prefix`)."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        # an unknown key first: a misspelt key is also reported missing, and the typo is the news
        error = min(errors, key=lambda err: err["type"] != "extra_forbidden")
        raise ConfigError(_message(cls, error, prefix)) from None


def key_value(text: str, option: str) -> tuple[str, str]:
    """`KEY=VALUE` split at its first `=` (a ConfigError naming `option` otherwise)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"{option}: expected KEY=VALUE, got {text!r}")
    return key, value


def override(base: TrainConfig, changes: dict[str, Any], key: str) -> TrainConfig:
    """`base` with `changes` applied, validated like params.yaml itself (errors name `key`)."""
    return validate(TrainConfig, {**base.model_dump(), **changes}, key)


def parse_params(data: dict[str, Any]) -> Params:
    params = validate(Params, data, "")
    from pipeline.config import checks  # imports torch and timm: only once params are read

    checks.check(params)
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    with path.open() as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from e
    return parse_params(data)
