"""``landscape analyze``: does the geometry at the end of training predict generalization, across runs?

Reads the finished runs of an MLflow experiment, keeps **one run per configuration** (the params and the data
actually used; of several — the same point rerun after a code change, or two writers of one pipeline state —
the one that ended last, the others listed as superseded), skips analysis, unfinished, incomplete and
diverged runs (listed with the reason), takes each measure at the final probed epoch and the generalization
gap (test − train loss; test − train error), and reports for every measure and gap:

* Kendall's τ_b over runs, with a 95% percentile interval from a seeded **cluster bootstrap over
  configurations** (all seeds of a configuration resampled together; :mod:`landscape.study.correlation`);
* Jiang et al. 2020's granulated Ψ over the hyperparameter axes that vary, each ψ_i over groups in which only
  axis i varies — every other coordinate, **the seed included**, fixed. Seeds (any varying key ending in
  ``seed``) are replicates: held fixed in the groups, never an axis of Ψ, never a unit of the bootstrap.

A flatness search that ended at the top of its interval (a network at chance) leaves its values censored there:
they enter the ranks as they are (tied, at the flat end), and each such measure says how many of its runs were
censored (``at_interval_top``; each run lists its own). A measure that some runs have no value for (#steps where
the train loss never fell below its threshold: right-censored at different step budgets, so not rankable; a
barrier whose copy diverged) is ranked over the runs that have it, and says how many had none
(``without_value``). Likewise each measure with the margin γ in it says in how
many runs the margin percentile fell on a misclassified example (``margin_negative``: γ is then the size of a wrong
margin, as the reference code takes it).

Writes ``report.md``, ``analysis.json`` and figures, and logs them as an MLflow run in the same experiment (tag
``landscape.analysis``) that names the runs it used.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landscape.errors import InputError, LandscapeError
from landscape.io import write_json
from landscape.study.correlation import cluster_bootstrap_interval, granulated, kendall_tau_b
from landscape.study.registry import GAPS, MARGIN_MEASURES, MEASURES, SEARCHES, censored_measures, margin_negative
from landscape.study.report import (  # noqa: F401 - family_summary, _natural re-exported
    _natural,
    axis_effects,
    configuration_table,
    family_summary,
    report_markdown,
    split_axes,
)

ANALYSIS_TAG = "landscape.analysis"
MIN_RUNS = 4
CENSORABLE = {name for _, _, names in SEARCHES for name in names}


@dataclass
class RunRow:
    run_id: str
    name: str
    params: dict[str, str]
    measures: dict[str, float | None]
    gaps: dict[str, float]
    trajectory: list[tuple[int, float]] = field(default_factory=list)  # (epoch, η·λ_max / threshold)
    end_time: int = 0
    extra: dict[str, float] = field(default_factory=dict)  # accuracies: described per configuration, not ranked
    censored: list[str] | None = None  # measures censored at a flatness search's top (None: not known)
    margin_negative: bool | None = None  # the margin percentile fell on a misclassified example (None: not known)


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


IDENTITY_SKIP = ("track.",)  # params that name a run, not what it computed


def same_configuration(a: dict[str, str], b: dict[str, str]) -> bool:
    """Whether two runs computed the same configuration: equal on every param both have (``track.*`` aside). A
    param only one of them has was added by newer code (``measures.sharpness``, ``model.depth``, …): the older
    run had no such setting, so it cannot tell the two apart."""
    return all(a[k] == b[k] for k in a.keys() & b.keys() if not k.startswith(IDENTITY_SKIP))


def collect(client: Any, experiment_id: str, min_train_accuracy: float | None = None
            ) -> tuple[list[RunRow], list[dict[str, str]]]:
    """The usable runs of the experiment, one per configuration, and the skipped ones, each with the reason.
    With ``min_train_accuracy``, runs that did not fit the training set that well are skipped too (Jiang et al.
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
            skipped.append({"run_id": run.info.run_id, "name": name, "reason": why, "params": dict(run.data.params)})
            continue
        params = dict(run.data.params)
        rows.append(RunRow(run.info.run_id, name, params, {ms.name: _number(ms.get(m, params)) for ms in MEASURES},
                           {"loss_gap": m["loss/generalization_gap"], "error_gap": train_acc - test_acc},
                           end_time=run.info.end_time or 0,
                           extra={"train_accuracy": train_acc, "test_accuracy": test_acc},
                           censored=censored_measures(m, params, tags), margin_negative=margin_negative(m, params)))
    rows, superseded = one_per_configuration(rows)
    skipped += superseded
    rows.sort(key=lambda r: r.name)
    return rows, skipped


def one_per_configuration(rows: list[RunRow]) -> tuple[list[RunRow], list[dict[str, str]]]:
    """Of the runs of one configuration (:func:`same_configuration`) keep the one that ended last (the newest
    code; between two writers of one pipeline state, the same one every time: ties go to the larger run id);
    the others are superseded by it."""
    kept: list[RunRow] = []
    superseded = []
    for r in sorted(rows, key=lambda r: (r.end_time, r.run_id), reverse=True):
        newer = next((k for k in kept if same_configuration(k.params, r.params)), None)
        if newer is None:
            kept.append(r)
            continue
        superseded.append({"run_id": r.run_id, "name": r.name,
                           "reason": f"superseded by run {newer.run_id} (same params and data; it ended later: "
                                     "newer code, or a second writer of the same pipeline state)"})
    return kept, superseded


def varying_axes(rows: list[RunRow]) -> list[str]:
    """The params that take more than one value among the runs that have them (a param that newer code added
    and older runs lack is not an axis by being absent)."""
    keys = sorted({k for r in rows for k in r.params})
    return [k for k in keys if not k.startswith(("track.", "data.source_used", "data.train_count", "data.test_count"))
            and len({r.params[k] for r in rows if k in r.params}) > 1]


def correlations(rows: list[RunRow], axes: list[str], resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """τ_b, its cluster-bootstrap interval and Ψ for every measure present, against both gaps."""
    psi_axes, seeds = split_axes(axes)
    out: dict[str, Any] = {}
    for ms in MEASURES:
        usable = [r for r in rows if r.measures.get(ms.name) is not None]
        if len(usable) < MIN_RUNS:
            continue
        x = [r.measures[ms.name] for r in usable]
        hp = [{a: r.params.get(a) for a in axes} for r in usable]
        clusters = [tuple(r.params.get(a) for a in psi_axes) for r in usable]
        entry: dict[str, Any] = {"what": ms.what, "family": ms.family, "runs": len(usable),
                                 "configurations": len(set(clusters))}
        if len(usable) < len(rows):  # e.g. #steps never reached (right-censored), a copy that diverged: left out
            entry["without_value"] = len(rows) - len(usable)
        if ms.name in CENSORABLE and all(r.censored is not None for r in usable):
            entry["at_interval_top"] = sum(ms.name in r.censored for r in usable)  # tied at the flat end
        if ms.name in MARGIN_MEASURES and all(r.margin_negative is not None for r in usable):
            entry["margin_negative"] = sum(bool(r.margin_negative) for r in usable)  # γ = |a wrong margin|
        for gap in GAPS:
            y = [r.gaps[gap] for r in usable]
            entry[gap] = {"tau": kendall_tau_b(x, y),
                          "interval": cluster_bootstrap_interval(x, y, clusters, resamples, seed=seed),
                          **granulated(hp, x, y, psi_axes, held=seeds)}
        out[ms.name] = entry
    return out


def analyze(experiment: str, out_dir: Path, uri: str | None = None, resamples: int = 2000, seed: int = 0,
            log_run: bool = True, min_train_accuracy: float | None = None) -> dict[str, Any]:
    """Run the analysis of one MLflow experiment into ``out_dir``; return the analysis record."""
    from landscape.tracking import failures_name_the_store, prepare_env, redact_uri, repo_root, tracking_uri

    prepare_env()
    uri = uri or tracking_uri(repo_root())
    with failures_name_the_store(uri, "check the store's address (MLFLOW_TRACKING_URI) and that it is up"):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments(max_results=50)]
            raise InputError(f"no MLflow experiment '{experiment}' in {redact_uri(uri)}; experiments there: "
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
        record, corr, axes = build_record(experiment, exp.experiment_id, rows, skipped, resamples, seed,
                                          min_train_accuracy)
        out_dir.mkdir(parents=True, exist_ok=True)
        run_id = None
        if log_run:
            tags = {ANALYSIS_TAG: "true", "landscape.analysis.runs": ",".join(r.run_id for r in rows)[:5000]}
            run_id = client.create_run(exp.experiment_id, run_name=f"analysis of {len(rows)} runs", tags=tags,
                                       start_time=int(time.time() * 1000)).info.run_id
            record["analysis_run_id"] = run_id
        figures = write_outputs(out_dir, record, rows, skipped, axes, corr, resamples, seed)
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


def build_record(experiment: str, experiment_id: str | None, rows: list[RunRow], skipped: list[dict[str, Any]],
                 resamples: int, seed: int, min_train_accuracy: float | None = None
                 ) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(analysis.json's record, the correlations, the varying axes) of the usable ``rows``."""
    axes = varying_axes(rows)
    psi_axes, seeds = split_axes(axes)
    corr = correlations(rows, axes, resamples, seed)
    record = {"experiment": experiment, "experiment_id": experiment_id, "axes": axes,
              "psi_axes": psi_axes, "replicate_axes": seeds, "min_train_accuracy": min_train_accuracy,
              "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95, "unit": "configuration",
                            "configurations": len({tuple(r.params.get(a) for a in psi_axes) for r in rows})},
              "psi": "Jiang et al. 2020: groups hold every other coordinate fixed, seeds included",
              "runs": [{"run_id": r.run_id, "name": r.name, "axes": {a: r.params.get(a) for a in axes},
                        "measures": r.measures, "gaps": r.gaps}
                       | ({"at_interval_top": r.censored} if r.censored is not None else {})
                       | ({"margin_negative": r.margin_negative} if r.margin_negative is not None else {})
                       for r in rows],
              "skipped": [{k: v for k, v in s.items() if k != "params"}
                          | {"axes": {a: s.get("params", {}).get(a) for a in axes}} for s in skipped],
              "correlations": corr, "families": family_summary(corr),
              "configurations": configuration_table(rows, skipped, psi_axes),
              "axis_effects": axis_effects(rows, axes)}
    return record, corr, axes


def write_outputs(out_dir: Path, record: dict[str, Any], rows: list[RunRow], skipped: list[dict[str, Any]],
                  axes: list[str], corr: dict[str, Any], resamples: int, seed: int) -> list[Path]:
    """analysis.json, report.md and the figures into ``out_dir``; returns the figures."""
    from landscape.study.figures import study_figures

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "analysis.json", record)
    (out_dir / "report.md").write_text(report_markdown(record["experiment"], rows, skipped, axes, corr, resamples,
                                                       seed))
    return study_figures(rows, axes, list(corr), out_dir)


def reanalyze(path: Path, out_dir: Path, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The statistics of this code on the runs an earlier ``analysis.json`` recorded (each run's axes, measures
    and gaps as that analysis read them from MLflow): for reports written before a change of the statistics.
    Runs and skipped runs are taken as recorded; measures the earlier code did not compute stay absent."""
    from landscape.io import read_json

    old = read_json(path)
    rows = [RunRow(r["run_id"], r["name"], dict(r["axes"]), r["measures"], r["gaps"], censored=r.get("at_interval_top"),
                   margin_negative=r.get("margin_negative")) for r in old["runs"]]
    if len(rows) < MIN_RUNS:
        raise InputError(f"{path} records {len(rows)} run(s); a rank correlation needs at least {MIN_RUNS}")
    record, corr, axes = build_record(old["experiment"], old.get("experiment_id"), rows, old.get("skipped", []),
                                      resamples, seed, old.get("min_train_accuracy"))
    record["reanalysis_of"] = str(path)
    write_outputs(out_dir, record, rows, old.get("skipped", []), axes, corr, resamples, seed)
    report = out_dir / "report.md"
    head, _, rest = report.read_text().partition("\n")
    report.write_text(f"{head}\n\n*Re-analysis*: this code's statistics on the runs recorded in `{path.name}` "
                      "(their measures as the code of that time computed them; the runs' MLflow records are not "
                      f"read again).\n{rest}")
    return record
