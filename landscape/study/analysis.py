"""``landscape analyze``: does the geometry at the end of training predict generalization, across runs?

Reads every finished run of an MLflow experiment (analysis runs, unfinished, incomplete and diverged runs are
skipped and listed), takes each geometry measure at the final probed epoch and the generalization gap (test −
train loss; test − train error), and reports Kendall's τ_b with a seeded bootstrap 95% interval over runs and
the granulated Ψ of Jiang et al. 2020 over the hyperparameter axes that vary (seeds are replicates, not axes:
runs that differ only in their seeds fall into the same group, so each group's τ is over all its seeds).
Writes ``report.md``, ``analysis.json`` and figures, and logs them as an MLflow run in the same experiment (tag
``landscape.analysis``) that names the runs it used.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landscape.errors import LandscapeError
from landscape.io import write_json
from landscape.study.correlation import bootstrap_interval, granulated, kendall_tau_b

ANALYSIS_TAG = "landscape.analysis"
MIN_RUNS = 4


def _get(key: str) -> Callable[[dict[str, float], dict[str, str]], float | None]:
    return lambda m, p: m.get(key)


def _ratio(num: str, den: str) -> Callable[[dict[str, float], dict[str, str]], float | None]:
    def f(m: dict[str, float], p: dict[str, str]) -> float | None:
        a, b = m.get(num), m.get(den)
        return a / b if a is not None and b not in (None, 0) else None
    return f


def _over_radius2(m: dict[str, float], p: dict[str, str]) -> float | None:
    v, r = m.get("sharpness/directional"), p.get("probe.sharpness_radius")
    return v / float(r) ** 2 if v is not None and r is not None else None


# (name, what it is, how to read it from a run's final metrics and params)
MEASURES: list[tuple[str, str, Callable[[dict[str, float], dict[str, str]], float | None]]] = [
    ("lambda_max", "λ_max of the probe-set Hessian", _get("curvature/lambda_max")),
    ("hessian_trace", "tr(H), Hutchinson", _get("curvature/hessian_trace")),
    ("directional_sharpness", "paired random-direction sharpness at radius ρ", _get("sharpness/directional")),
    ("worst_case_sharpness", "max over ‖d‖ ≤ ρ (projected gradient ascent)", _get("sharpness/worst_case")),
    ("adaptive_sharpness", "random-direction sharpness, d = |θ| ⊙ u", _get("sharpness/adaptive")),
    ("adaptive_worst_case_sharpness", "worst case over d = |θ| ⊙ u", _get("sharpness/adaptive_worst_case")),
    ("lgdi", "(η/2) gᵀHg/‖g‖²", _get("stability/lgdi")),
    ("grad_norm", "‖∇L_P‖", _get("gradient/norm")),
    ("line_barrier", "loss barrier along the line (interpolate stage)", _get("summary/line/barrier_height")),
    ("connect_loss_barrier", "loss barrier between two SGD-noise copies", _get("summary/connect/loss_barrier")),
    ("connect_error_barrier", "error barrier between two SGD-noise copies", _get("summary/connect/error_barrier")),
    # normalized variants that make runs with different η / sizes comparable
    ("eta_lambda_max", "η·λ_max (normalized)", _get("stability/ratio")),
    ("eta_lambda_max_over_threshold", "η·λ_max / divergence threshold (normalized)",
     _ratio("stability/ratio", "stability/threshold")),
    ("trace_per_parameter", "tr(H)/n, the mean eigenvalue (normalized)",
     _ratio("curvature/hessian_trace", "model/num_params")),
    ("directional_sharpness_over_radius2", "sharpness / ρ² (normalized)", _over_radius2),
]
GAPS = {"loss_gap": "test − train loss", "error_gap": "test − train error"}


@dataclass
class RunRow:
    run_id: str
    name: str
    params: dict[str, str]
    measures: dict[str, float | None]
    gaps: dict[str, float]
    trajectory: list[tuple[int, float]] = field(default_factory=list)  # (epoch, η·λ_max / threshold)


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def collect(client: Any, experiment_id: str, min_train_accuracy: float | None = None
            ) -> tuple[list[RunRow], list[dict[str, str]]]:
    """The usable runs of the experiment and the skipped ones, each with the reason. With
    ``min_train_accuracy``, runs that did not fit the training set that well are skipped too (Jiang et al.
    2020 compare only networks trained to the same training-loss criterion)."""
    rows, skipped = [], []
    for run in client.search_runs([experiment_id], max_results=50000):
        tags, name = run.data.tags, run.info.run_name
        why = None
        if tags.get(ANALYSIS_TAG):
            continue  # an earlier analysis, not a training run
        if run.info.status != "FINISHED":
            why = f"status {run.info.status}"
        elif tags.get("landscape.complete") != "true":
            why = "incomplete (no landscape.complete tag)"
        elif tags.get("landscape.diverged"):
            why = f"training diverged ({tags['landscape.diverged']})"
        m = {k: _number(v) for k, v in run.data.metrics.items()}
        if why is None:
            train_acc, test_acc = m.get("accuracy/train"), m.get("accuracy/test")
            if m.get("loss/generalization_gap") is None or train_acc is None or test_acc is None:
                why = "no final losses/accuracies logged"
            elif min_train_accuracy is not None and train_acc < min_train_accuracy:
                why = f"train accuracy {train_acc:.3f} < {min_train_accuracy} (did not fit the training set)"
        if why is not None:
            skipped.append({"run_id": run.info.run_id, "name": name, "reason": why})
            continue
        params = dict(run.data.params)
        rows.append(RunRow(run.info.run_id, name, params, {n: _number(f(m, params)) for n, _, f in MEASURES},
                           {"loss_gap": m["loss/generalization_gap"], "error_gap": train_acc - test_acc}))
    rows.sort(key=lambda r: r.name)
    return rows, skipped


def varying_axes(rows: list[RunRow]) -> list[str]:
    keys = sorted({k for r in rows for k in r.params})
    return [k for k in keys if not k.startswith(("track.", "data.source_used", "data.train_count", "data.test_count"))
            and len({r.params.get(k) for r in rows}) > 1]


def correlations(rows: list[RunRow], axes: list[str], resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """τ_b, its bootstrap interval and Ψ for every measure present, against both gaps."""
    psi_axes = [a for a in axes if not a.endswith(".seed")]
    out: dict[str, Any] = {}
    for name, what, _ in MEASURES:
        usable = [r for r in rows if r.measures.get(name) is not None]
        if len(usable) < MIN_RUNS:
            continue
        x = [r.measures[name] for r in usable]
        hp = [{a: r.params.get(a) for a in axes} for r in usable]
        entry: dict[str, Any] = {"what": what, "runs": len(usable)}
        for gap in GAPS:
            y = [r.gaps[gap] for r in usable]
            entry[gap] = {"tau": kendall_tau_b(x, y), "interval": bootstrap_interval(x, y, resamples, seed=seed),
                          **granulated(hp, x, y, psi_axes)}
        out[name] = entry
    return out


def _fmt(v: float | None, digits: int = 2) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.{digits}f}"


def report_markdown(experiment: str, rows: list[RunRow], skipped: list[dict[str, str]], axes: list[str],
                    corr: dict[str, Any]) -> str:
    psi_axes = [a for a in axes if not a.endswith(".seed")]
    lines = [f"# Geometry against generalization: experiment `{experiment}`", "",
             f"{len(rows)} runs used, {len(skipped)} skipped (listed at the end). Measures at the final probed "
             "epoch; gaps: loss gap = test − train loss, error gap = test − train error (full splits). "
             "τ = Kendall's τ_b over runs with a "
             "seeded percentile-bootstrap 95% interval (2,000 resamples of runs); Ψ = mean over the axes "
             f"{', '.join(f'`{a}`' for a in psi_axes) or '(none)'} of the mean τ within groups where only that "
             "axis varies (Jiang et al. 2020); groups per axis in parentheses. Seeds are replicates, not an axis: "
             "runs that differ only in their seed share a group.", ""]
    for gap, what in GAPS.items():
        lines += [f"## {gap} ({what})", "",
                  "| measure | runs | τ | 95% interval | Ψ | " + " | ".join(f"ψ `{a}`" for a in psi_axes) + " |",
                  "| --- | --- | --- | --- | --- |" + " --- |" * len(psi_axes)]
        for name, e in corr.items():
            g = e[gap]
            per = " | ".join(f"{_fmt(g['axes'][a]['psi'])} ({g['axes'][a]['groups']})" for a in psi_axes)
            lines.append(f"| {name} | {e['runs']} | {_fmt(g['tau'])} | [{_fmt(g['interval']['low'])}, "
                         f"{_fmt(g['interval']['high'])}] | {_fmt(g['Psi'])} | {per} |")
        lines.append("")
    lines += ["## Runs used", "", "| run | id | " + " | ".join(f"`{a}`" for a in axes) + " | loss gap | error gap |",
              "| --- | --- |" + " --- |" * len(axes) + " --- | --- |"]
    for r in rows:
        lines.append(f"| {r.name} | `{r.run_id}` | " + " | ".join(str(r.params.get(a)) for a in axes)
                     + f" | {r.gaps['loss_gap']:.4f} | {r.gaps['error_gap']:.4f} |")
    lines += ["", "## Runs skipped", ""]
    lines += [f"- {s['name']} (`{s['run_id']}`): {s['reason']}" for s in skipped] or ["- none"]
    return "\n".join(lines) + "\n"


def analyze(experiment: str, out_dir: Path, uri: str | None = None, resamples: int = 2000, seed: int = 0,
            log_run: bool = True, min_train_accuracy: float | None = None) -> dict[str, Any]:
    """Run the analysis of one MLflow experiment into ``out_dir``; return the analysis record."""
    from landscape.tracking import failures_name_the_store, prepare_env, repo_root, tracking_uri

    prepare_env()
    uri = uri or tracking_uri(repo_root())
    with failures_name_the_store(uri, "check the store's address (MLFLOW_TRACKING_URI) and that it is up"):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments(max_results=50)]
            raise LandscapeError(f"no MLflow experiment '{experiment}' in {uri}; experiments there: "
                                 f"{', '.join(names) or 'none'}")
        rows, skipped = collect(client, exp.experiment_id, min_train_accuracy)
        if len(rows) < MIN_RUNS:
            raise LandscapeError(f"experiment '{experiment}' has {len(rows)} usable run(s) ({len(skipped)} skipped); "
                                 f"a rank correlation needs at least {MIN_RUNS}")
        for r in rows:
            hist = client.get_metric_history(r.run_id, "stability/ratio")
            threshold = _number(client.get_run(r.run_id).data.metrics.get("stability/threshold"))
            if threshold:
                r.trajectory = sorted((int(h.step), h.value / threshold) for h in hist)
        axes = varying_axes(rows)
        corr = correlations(rows, axes, resamples, seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        record = {"experiment": experiment, "experiment_id": exp.experiment_id, "axes": axes,
                  "min_train_accuracy": min_train_accuracy,
                  "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95},
                  "runs": [{"run_id": r.run_id, "name": r.name, "axes": {a: r.params.get(a) for a in axes},
                            "measures": r.measures, "gaps": r.gaps} for r in rows],
                  "skipped": skipped, "correlations": corr}
        run_id = None
        if log_run:
            tags = {ANALYSIS_TAG: "true", "landscape.analysis.runs": ",".join(r.run_id for r in rows)[:5000]}
            run_id = client.create_run(exp.experiment_id, run_name=f"analysis of {len(rows)} runs", tags=tags,
                                       start_time=int(time.time() * 1000)).info.run_id
            record["analysis_run_id"] = run_id
        write_json(out_dir / "analysis.json", record)
        (out_dir / "report.md").write_text(report_markdown(experiment, rows, skipped, axes, corr))
        from landscape.study.figures import study_figures

        figures = study_figures(rows, axes, list(corr), out_dir)
        if run_id is not None:
            try:
                client.log_param(run_id, "runs_used", len(rows))
                client.log_param(run_id, "axes", json.dumps(axes)[:6000])
                for name, e in corr.items():
                    for gap in GAPS:
                        for k, v in (("tau", e[gap]["tau"]), ("Psi", e[gap]["Psi"])):
                            if v is not None and not math.isnan(v):
                                client.log_metric(run_id, f"{gap}/{k}/{name}", v)
                for p in [out_dir / "report.md", out_dir / "analysis.json", *figures]:
                    client.log_artifact(run_id, str(p))
            except BaseException:
                client.set_terminated(run_id, "FAILED")
                raise
            client.set_terminated(run_id, "FINISHED")
        return record
