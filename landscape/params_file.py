"""Reading params.yaml: YAML (a key given twice is an error), one-line errors that name the key, the value and
what is allowed, and the flat ``group.key`` view used for MLflow and hashing. The schema is in
:mod:`landscape.config`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from landscape.config import GROUPS, ConfigError, Params
from landscape.io import Yaml12Loader, read_yaml

_ALIASES = {
    "learning_rate": "lr",
    "learning-rate": "lr",
    "num_epochs": "epochs",
    "n_epochs": "epochs",
    "bs": "batch_size",
    "wd": "weight_decay",
    "widths": "hidden",
    "hidden_sizes": "hidden",
    "act": "activation",
}


def _format_error(err: dict[str, Any], groups: dict[str, type[BaseModel]]) -> tuple[str, str]:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        parent = loc[:-1]
        allowed: list[str]
        if not parent:
            allowed = list(Params.model_fields)
        else:
            model = groups.get(parent[0])
            allowed = list(model.model_fields) if model is not None else []
        alias = _ALIASES.get(loc[-1])
        hint = [alias] if alias in allowed else difflib.get_close_matches(loc[-1], allowed, n=1)
        maybe = f" (did you mean '{'.'.join([*parent, hint[0]])}'?)" if hint else ""
        return key, f"params.yaml: unknown key '{key}'{maybe}; allowed keys here: {', '.join(allowed)}"
    value = err.get("input")
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return key, f"params.yaml: {key} = {value!r} is invalid: {msg}"


def parse_params(raw: Any) -> Params:
    """Validate an already-parsed params mapping. Raises ConfigError (one line, names the key)."""
    if raw is None:
        raise ConfigError("params.yaml is empty; allowed: a mapping with the groups " + ", ".join(GROUPS))
    if not isinstance(raw, dict):
        raise ConfigError(
            f"params.yaml must be a mapping of groups ({', '.join(GROUPS)}), got {type(raw).__name__}"
        )
    for group, value in raw.items():
        if group in GROUPS and not isinstance(value, dict):
            raise ConfigError(
                f"params.yaml: {group} = {value!r} is invalid: must be a mapping of keys "
                f"({', '.join(GROUPS[group].model_fields)})",
                key=str(group),
            )
    try:
        return Params.model_validate(raw)
    except ConfigError:
        raise
    except ValidationError as exc:
        errors = exc.errors()
        key, line = _format_error(errors[0], GROUPS)
        if len(errors) > 1:
            line += f" (and {len(errors) - 1} more problem(s))"
        raise ConfigError(line, key=key) from None


class _UniqueKeyLoader(Yaml12Loader):
    """YAML's safe loader (YAML 1.2 floats), but a key given twice in one mapping is an error (PyYAML keeps the
    last silently)."""


def _construct_mapping(loader: Yaml12Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first at line {seen[key] + 1})",
                    key_node.start_mark)
        except TypeError:  # an unhashable key: let the default constructor report it
            break
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml. Raises ConfigError (one line) before any work is done."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found; allowed: a params.yaml at the repository root")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}); allowed: a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read ({exc.strerror}); allowed: a readable YAML file") from None
    try:
        raw = read_yaml(text, _UniqueKeyLoader)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"params.yaml is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    return parse_params(raw)


def flatten(params: Params) -> dict[str, Any]:
    """``{'train.lr': 0.05, 'model.hidden': [256, 256], ...}`` — every key, for MLflow and hashing."""
    out: dict[str, Any] = {}
    for group, cls in GROUPS.items():
        values = getattr(params, group)
        for key in cls.model_fields:
            out[f"{group}.{key}"] = getattr(values, key)
    return out
