"""Sweep grids: a YAML file of params keys → lists, expanded into points (the cartesian product, plus fixed
overrides), each validated as a whole params.yaml before anything runs.

    experiment: study-default     # the MLflow experiment every point's run goes to (sets track.experiment)
    name: default                 # DVC experiment names are <name>-000, <name>-001, …
    grid:                         # key -> list of values; the points are the cartesian product, in file order
      train.lr: [0.02, 0.05, 0.1]
      model.hidden: [[64], [256, 256]]
    fixed:                        # applied to every point
      data.source: offline

A key that params.yaml does not have, an empty or non-list axis, or a point that params validation rejects is
refused before anything is queued, with one line naming the point and the key.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from landscape.config import GROUPS, ConfigError
from landscape.io import read_yaml
from landscape.params_file import parse_params

ALL_KEYS = tuple(f"{g}.{k}" for g, cls in GROUPS.items() for k in cls.model_fields)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # safe as a git ref component (DVC experiment names)


class GridError(ConfigError):
    """A sweep grid that cannot run; the message names the point and the key."""


@dataclass(frozen=True)
class Point:
    index: int
    name: str  # the DVC experiment name
    overrides: dict[str, Any]  # every key this point sets (grid values + fixed), dotted
    axes: dict[str, Any]  # only the grid values: what varies

    def label(self) -> str:
        return ", ".join(f"{k}={_fmt(v)}" for k, v in self.axes.items())


@dataclass
class Grid:
    experiment: str
    name: str
    axes: dict[str, list[Any]]
    fixed: dict[str, Any] = field(default_factory=dict)
    points: list[Point] = field(default_factory=list)


def _fmt(value: Any) -> str:
    """A value as DVC's ``-S key=value`` (Hydra override grammar) and YAML both read it back."""
    if isinstance(value, str):
        return value if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_+\-]*", value) and value not in ("null", "true", "false") \
            else "'" + value.replace("'", "\\'") + "'"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    return repr(value)


def _same_value(a: Any, b: Any) -> bool:
    """Equal as params values (1 and 1.0 are one learning rate; True is not 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def set_override(raw: dict[str, Any], key: str, value: Any) -> None:
    group, name = key.split(".", 1)
    node = raw.setdefault(group, {})
    if not isinstance(node, dict):
        raise GridError(f"params.yaml group {group} is not a mapping", key=key)
    node[name] = copy.deepcopy(value)


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """params.yaml (parsed) with the dotted overrides set."""
    raw = copy.deepcopy(base)
    for key, value in overrides.items():
        set_override(raw, key, value)
    return raw


def load_grid(path: str | Path, params_path: str | Path = "params.yaml") -> Grid:
    """Read, expand and validate a grid file against the current params.yaml. Raises GridError."""
    path = Path(path)
    try:
        spec = read_yaml(path)
    except OSError as exc:
        raise GridError(f"{path}: cannot read the grid ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise GridError(f"{path}: not UTF-8 text (byte {exc.start}); allowed: a YAML file") from None
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("grid"), dict) or not spec["grid"]:
        raise GridError(f"{path}: needs a mapping 'grid' of params keys to lists (and optionally experiment, name, "
                        "fixed)")
    unknown = set(spec) - {"experiment", "name", "grid", "fixed"}
    if unknown:
        raise GridError(f"{path}: unknown entries {sorted(unknown)}; allowed: experiment, name, grid, fixed")
    name = str(spec.get("name", path.stem))
    if not _NAME.match(name) or ".." in name or len(name) > 200:
        raise GridError(f"{path}: name = {name!r}: allowed: letters, digits, '_', '.', '-', starting with a letter or "
                        "digit, no '..' (the points become DVC experiment names, which are git refs)")
    experiment = str(spec.get("experiment", f"sweep-{name}"))
    fixed = spec.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise GridError(f"{path}: fixed must be a mapping of params keys to values")
    axes: dict[str, list[Any]] = {}
    for key, values in spec["grid"].items():
        if key not in ALL_KEYS:
            raise GridError(f"{path}: unknown key '{key}' in grid; allowed: the keys of params.yaml, e.g. train.lr",
                            key=key)
        if not isinstance(values, list) or not values:
            raise GridError(f"{path}: grid key '{key}' = {values!r}: allowed: a non-empty list of values", key=key)
        seen: list[Any] = []
        for v in values:
            if any(_same_value(v, w) for w in seen):
                raise GridError(f"{path}: grid key '{key}' lists {_fmt(v)} twice: two points would be one pipeline "
                                "state (one MLflow run); allowed: distinct values", key=key)
            seen.append(v)
        axes[key] = values
    for key in fixed:
        if key not in ALL_KEYS:
            raise GridError(f"{path}: unknown key '{key}' in fixed; allowed: the keys of params.yaml", key=key)
        if key in axes:
            raise GridError(f"{path}: '{key}' is both a grid axis and fixed; allowed: one of the two", key=key)
    if "track.experiment" in axes:
        raise GridError(f"{path}: track.experiment is set by the sweep (entry 'experiment'), not a grid axis")
    base = read_yaml(Path(params_path)) or {}
    for key in [*axes, *fixed]:
        group, field_name = key.split(".", 1)
        if not isinstance(base.get(group), dict) or field_name not in base[group]:
            raise GridError(f"{path}: '{key}' is not in {params_path}; allowed: keys the file has (dvc exp run -S "
                            f"sets only those): add '{field_name}' under '{group}:' with its default first", key=key)
    grid = Grid(experiment=experiment, name=name, axes=axes, fixed=dict(fixed))
    for i, combo in enumerate(itertools.product(*axes.values())):
        values = dict(zip(axes, combo, strict=True))
        overrides = {**fixed, **values, "track.experiment": experiment}
        point = Point(i, f"{name}-{i:03d}", overrides, values)
        try:
            parse_params(apply_overrides(base, overrides))
        except ConfigError as exc:
            raise GridError(f"{path}: point {point.name} ({point.label()}): {exc}", key=exc.key) from None
        grid.points.append(point)
    return grid


def dvc_set_args(point: Point) -> list[str]:
    """``-S key=value`` arguments for ``dvc exp run``."""
    out: list[str] = []
    for key, value in point.overrides.items():
        out += ["-S", f"{key}={_fmt(value)}"]
    return out
