"""What a pipeline state's MLflow run holds, by name: per-epoch metrics grouped by prefix (the MLflow UI groups
charts by the part before ``/``; the JSON files keep their own keys), the readable run name, and the summary of
the surface's plane. :mod:`landscape.tracking` logs them."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from landscape.io import read_json

# per-epoch record keys -> MLflow metric names (charts are grouped by the part before '/')
EPOCH_METRICS = {
    "train_loss": "loss/train", "test_loss": "loss/test", "probe_loss": "loss/probe",
    "generalization_gap": "loss/generalization_gap",
    "train_accuracy": "accuracy/train", "test_accuracy": "accuracy/test",
    "grad_norm": "gradient/norm",
    "lambda_max": "curvature/lambda_max", "lambda_max_residual": "curvature/lambda_max_residual",
    "lambda_min": "curvature/lambda_min", "lambda_min_residual": "curvature/lambda_min_residual",
    "hessian_trace": "curvature/hessian_trace", "hessian_trace_stderr": "curvature/hessian_trace_stderr",
    "lanczos_iterations": "curvature/lanczos_iterations", "hvp_count": "curvature/hvp_count",
    "directional_sharpness": "sharpness/directional", "directional_sharpness_stderr": "sharpness/directional_stderr",
    "sharpness_trace_prediction": "sharpness/trace_prediction",
    "stability_ratio": "stability/ratio", "stability_threshold": "stability/threshold",
    "lgdi": "stability/lgdi", "lgdi_effective": "stability/lgdi_effective",
    "num_params": "model/num_params",
    "worst_case_sharpness": "sharpness/worst_case", "adaptive_sharpness": "sharpness/adaptive",
    "adaptive_worst_case_sharpness": "sharpness/adaptive_worst_case",
    "adaptive_sharpness_stderr": "sharpness/adaptive_stderr", "worst_case_best_step": "sharpness/worst_case_best_step",
    "hessian_outliers": "curvature/outliers", "hessian_bulk_edge": "curvature/bulk_edge",
}
# record keys that are settings or flags, not measurements: logged as params or not at all
NOT_METRICS = {"epoch", "diverged", "lr", "momentum", "nesterov", "probe_samples", "sharpness_radius",
               "sharpness_directions", "trace_samples", "lambda_max_converged", "lambda_min_converged",
               "ascent_steps", "adaptive_radius", "adaptive_worst_case_radius", "hessian_outliers_saturated"}


def metric_name(key: str) -> str:
    """The grouped MLflow name of a per-epoch record key (``curvature/…`` etc.; unknown keys go to ``probe/``)."""
    if key in EPOCH_METRICS:
        return EPOCH_METRICS[key]
    for prefix, group in (("lambda", "curvature"), ("hessian", "curvature"), ("sharpness", "sharpness"),
                          ("worst_case", "sharpness"), ("adaptive", "sharpness")):
        if key.startswith(prefix) or prefix in key:
            return f"{group}/{key}"
    return f"probe/{key}"


def _metric_value(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    return None


def readable_run_name(flat_params: dict[str, Any], defaults: dict[str, Any], dataset: dict[str, Any]) -> str:
    """The data actually used (``mnist offline 4000/1000``), then the params that differ from the defaults
    (``lr=0.1 hidden=[64]``, or ``defaults``); the same for the same pipeline state. A key is named by its
    last part unless another group has a key of that name (``train.seed=1``, ``surface.points=5``)."""
    skip = {"track.experiment", "track.run_name"}
    leaves = Counter(k.split(".", 1)[1] for k in {*flat_params, *defaults})

    def label(key: str) -> str:
        leaf = key.split(".", 1)[1]
        return leaf if leaves[leaf] == 1 else key

    diffs = [f"{label(k)}={_short(v)}" for k, v in flat_params.items() if k not in skip and defaults.get(k) != v]
    data = f"{dataset.get('dataset', '?')} {dataset.get('source_used', '?')} " \
           f"{dataset['train']['count']}/{dataset['test']['count']}"
    return f"{data} · {' '.join(diffs) if diffs else 'defaults'}"[:250]


def _short(v: Any) -> str:
    return json.dumps(v, separators=(",", ":")) if isinstance(v, list) else str(v)


def epoch_metrics(records: list[dict[str, Any]], history: dict[str, Any], timestamp: int) -> list[Any]:
    """MLflow ``Metric`` objects: every numeric per-epoch record value at ``step = epoch``, the running
    train loss and epoch wall time from the train history."""
    from mlflow.entities import Metric

    out = []
    for rec in records:
        for k, v in rec.items():
            value = _metric_value(v)
            if k not in NOT_METRICS and value is not None:
                out.append(Metric(metric_name(k), value, timestamp, int(rec["epoch"])))
    for h in history.get("history", []):
        for k, name in (("train_loss", "train/running_loss"), ("wall_time_s", "time/epoch_s")):
            value = _metric_value(h.get(k))
            if value is not None:
                out.append(Metric(name, value, timestamp, int(h["epoch"])))
    return out


def surface_summary(files: dict[str, Path]) -> dict[str, float]:
    """What defines the surface's plane, as ``summary/surface/…`` metrics: the explained variance of the PCA
    directions, or the eigenvalues (and residuals) of the Hessian directions (surface.json, logged whole,
    holds the rest: the trajectory, the extents, the evaluation route)."""
    path = Path(files.get("surface", ""))
    if not path.is_file():
        return {}
    record = read_json(path)
    plane = record.get("plane") or {}
    out: dict[str, float] = {}
    if "curvature" in record:  # Li et al.'s convexity summary, and how much of its map converged
        out["surface/nonconvex_fraction"] = record["curvature"]["nonconvex_fraction"]
        conv = [c for row in record["curvature"]["converged"] for c in row]
        out["surface/curvature_converged_fraction"] = sum(conv) / len(conv)
    if plane.get("kind") == "pca":
        out.update({f"surface/explained_variance_{i + 1}": v for i, v in enumerate(plane["explained_variance"])})
    elif plane.get("kind") == "hessian":
        out.update({f"surface/lambda_{i + 1}": v for i, v in enumerate(plane["eigenvalues"])})
        out.update({f"surface/lambda_{i + 1}_residual": v for i, v in enumerate(plane["residuals"])})
    return out
