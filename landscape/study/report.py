"""The study's report: the per-family ranking, the per-configuration table (mean ± sd over seeds) and the
per-axis matched-pair changes, written as ``report.md`` by :mod:`landscape.study.analysis`."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from typing import TYPE_CHECKING, Any

from landscape.study.correlation import FEW_CLUSTERS, MIN_CLUSTERS
from landscape.study.registry import DESCRIBED, GAPS, MEASURES

if TYPE_CHECKING:
    from landscape.study.analysis import RunRow


def is_replicate_axis(key: str) -> bool:
    """Seeds (``train.seed``, ``data.seed``, ``connect.data_seed``, …) are replicates, not hyperparameters."""
    return key.rsplit(".", 1)[-1].endswith("seed")


def split_axes(axes: list[str]) -> tuple[list[str], list[str]]:
    """(hyperparameter axes of Ψ, replicate axes held fixed)."""
    return [a for a in axes if not is_replicate_axis(a)], [a for a in axes if is_replicate_axis(a)]


def configuration_table(rows: list[RunRow], skipped: list[dict[str, Any]], psi_axes: list[str]) -> list[dict]:
    """Per configuration (the non-seed axes): runs used, runs skipped (diverged or not fitted), and the mean and
    standard deviation over its seeds of the described measures, the gaps and the accuracies."""
    groups: dict[tuple, list[RunRow]] = {}
    for r in rows:
        groups.setdefault(tuple(r.params.get(a) for a in psi_axes), []).append(r)
    lost: dict[tuple, list[str]] = {}
    for s in skipped:
        key = tuple(s.get("params", {}).get(a) for a in psi_axes)
        if any(v is not None for v in key) and not s["reason"].startswith("superseded"):
            lost.setdefault(key, []).append(s["reason"])
    out = []
    for key in sorted(set(groups) | set(lost), key=lambda k: tuple(_natural(v) for v in k)):
        members = groups.get(key, [])
        entry: dict[str, Any] = {"axes": dict(zip(psi_axes, key, strict=True)), "runs": len(members),
                                 "skipped": lost.get(key, [])}
        values = {name: [r.measures.get(name) for r in members] for name in DESCRIBED}
        values.update({g: [r.gaps[g] for r in members] for g in GAPS})
        values.update({k: [r.extra.get(k) for r in members] for k in ("train_accuracy", "test_accuracy")})
        for name, vals in values.items():
            vals = [v for v in vals if v is not None]
            if vals:
                mean = statistics.fmean(vals)
                entry[name] = {"mean": mean, "sd": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)}
        out.append(entry)
    return out


def axis_effects(rows: list[RunRow], axes: list[str]) -> list[dict[str, Any]]:
    """How each described quantity moves along each hyperparameter axis: for every axis i and every pair of
    its adjacent values a → b (natural order), the change q(b) − q(a) over the **matched pairs** of runs that
    differ only in axis i (every other coordinate, the seed included, equal): mean, min, max and the number of
    pairs. A pair in which either run is missing (diverged, unfitted) is not formed."""
    psi_axes, _ = split_axes(axes)
    names = [*DESCRIBED, *GAPS, "train_accuracy"]
    out = []
    for axis in psi_axes:
        others = [a for a in axes if a != axis]
        cells: dict[tuple, dict[Any, RunRow]] = {}
        for r in rows:
            cells.setdefault(tuple(r.params.get(a) for a in others), {})[r.params.get(axis)] = r
        values = sorted({r.params.get(axis) for r in rows}, key=_natural)
        for a, b in itertools.pairwise(values):
            pairs = [(c[a], c[b]) for c in cells.values() if a in c and b in c]
            entry: dict[str, Any] = {"axis": axis, "from": a, "to": b, "pairs": len(pairs)}
            for name in names:
                diffs = [qb - qa for qa, qb in ((_quantity(ra, name), _quantity(rb, name)) for ra, rb in pairs)
                         if qa is not None and qb is not None]
                if diffs:
                    entry[name] = {"mean": statistics.fmean(diffs), "min": min(diffs), "max": max(diffs),
                                   "n": len(diffs)}
            out.append(entry)
    return out


def _quantity(r: RunRow, name: str) -> float | None:
    if name in GAPS:
        return r.gaps[name]
    return r.measures.get(name) if name in r.measures else r.extra.get(name)


def _natural(value: Any) -> tuple:
    """Sort key for a logged param value: numbers by value ("32" before "128"), lists element-wise, None last."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return (2, value)
    if value is None:
        return (3, 0)
    if isinstance(value, (bool, int, float)):
        return (0, float(value))
    if isinstance(value, list):
        return (1, tuple(_natural(v) for v in value))
    return (2, repr(value))


def _few(configs: int) -> str:
    """What the number of configurations allows the cluster bootstrap to say."""
    if configs < MIN_CLUSTERS:
        return (f" **No intervals**: {configs} configurations allow only {math.comb(2 * configs - 1, configs)} "
                f"distinct resamples; below {MIN_CLUSTERS} none is given (τ and Ψ are, but nothing says how far "
                "they would move on other configurations).")
    if configs < FEW_CLUSTERS:
        return (f" With {configs} configurations read the intervals as approximate: with few clusters cluster-"
                "bootstrap intervals tend to be too narrow (Cameron, Gelbach & Miller 2008).")
    return ""


def _fmt(v: float | None, digits: int = 2) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.{digits}f}"


def _abs_psi(entry: dict[str, Any], gap: str) -> float:
    v = entry[gap]["Psi"]
    return -1.0 if v is None or math.isnan(v) else abs(v)


def family_summary(corr: dict[str, Any]) -> dict[str, Any]:
    """Per gap: each family's measure with the largest |Ψ|, families ordered by it, and the lead of the first
    over the second (in |Ψ|), with whether their τ intervals overlap once each is taken in the direction of its
    Ψ (a negative and a positive correlation of equal strength are equally good predictors)."""
    out: dict[str, Any] = {}
    for gap in GAPS:
        best: dict[str, str] = {}
        for name, e in corr.items():
            fam = e["family"]
            if _abs_psi(e, gap) >= 0 and (fam not in best or _abs_psi(e, gap) > _abs_psi(corr[best[fam]], gap)):
                best[fam] = name
        order = sorted(best, key=lambda f: _abs_psi(corr[best[f]], gap), reverse=True)
        candidates = {f: sum(_abs_psi(e, gap) >= 0 and e["family"] == f for e in corr.values()) for f in order}
        rows = [{"family": f, "measure": best[f], "Psi": corr[best[f]][gap]["Psi"], "tau": corr[best[f]][gap]["tau"],
                 "interval": [corr[best[f]][gap]["interval"]["low"], corr[best[f]][gap]["interval"]["high"]],
                 "candidates": candidates[f]}
                for f in order]
        lead = None
        if len(rows) >= 2:
            a, b = rows[0], rows[1]

            def aligned(r: dict[str, Any]) -> tuple[float, float]:  # the interval of |τ| in the direction of Ψ
                lo, hi = r["interval"]
                return (lo, hi) if r["Psi"] >= 0 else (-hi, -lo)

            def missing(r: dict[str, Any]) -> bool:
                return any(v is None or math.isnan(v) for v in r["interval"])

            overlap = None  # no interval to compare (too few configurations, or τ undefined)
            if not (missing(a) or missing(b)):
                (alo, ahi), (blo, bhi) = aligned(a), aligned(b)
                overlap = not (alo > bhi or blo > ahi)
            lead = {"winner": a["family"], "runner_up": b["family"], "abs_psi_margin": abs(a["Psi"]) - abs(b["Psi"]),
                    "tau_intervals_overlap": overlap}
        out[gap] = {"best_by_family": rows, "lead": lead}
    return out


def report_markdown(experiment: str, rows: list[RunRow], skipped: list[dict[str, str]], axes: list[str],
                    corr: dict[str, Any], resamples: int = 2000, seed: int = 0) -> str:
    psi_axes, seeds = split_axes(axes)
    configs = len({tuple(r.params.get(a) for a in psi_axes) for r in rows})
    held = f" — the seeds {', '.join(f'`{a}`' for a in seeds)} included —" if seeds else ""
    lines = [f"# Geometry against generalization: experiment `{experiment}`", "",
             f"{len(rows)} runs used ({configs} configurations), {len(skipped)} skipped or superseded (listed at the "
             "end). Measures at the final probed epoch; gaps: loss gap = test − train loss, error gap = test − train "
             "error (full splits).", "",
             f"- τ = Kendall's τ_b over runs; **95% interval, cluster bootstrap over {configs} configurations** "
             f"(each resampled with all its seeds; {resamples:,} resamples, seed {seed}).{_few(configs)}",
             f"- Ψ = Jiang et al. 2020's granulated coefficient: the mean over the axes "
             f"{', '.join(f'`{a}`' for a in psi_axes) or '(none)'} of ψ_i, the mean over the groups in which only "
             f"axis i varies and every other coordinate{held} is fixed of the paper's τ (eq. 3: a tied pair counts "
             "0, so a measure constant along an axis has ψ_i = 0); groups per axis in parentheses. Seeds "
             "are replicates: never an axis of Ψ, never pooled into a group.",
             "- Within each family the measures are sorted by |Ψ|. An interval that contains 0 does not support a "
             "sign.",
             "- A flatness search (PAC-Bayes, worst case) that ended at the top of its interval [0, 2] — the "
             "accuracy never fell by the deviation, as for a network at chance — leaves its values censored there; "
             "they are ranked as they are (tied, as the flattest). *runs* says how many were censored.",
             "- The margin γ is the absolute value of the 10th-percentile output margin (as Jiang et al.'s code). "
             "Where that margin is negative (at least 10% of the training set misclassified) γ is the size of a "
             "wrong margin, and the measures with γ in them are no margin measures there; *runs* says how many "
             "had a negative margin.",
             "- A measure some runs have no value for (#steps where the train loss never fell below its threshold: "
             "right-censored at step budgets that differ with the batch size, so not rankable; a barrier whose copy "
             "diverged) is ranked over the runs that have it; *runs* says how many of all.", ""]
    summary = family_summary(corr)
    for gap, what in GAPS.items():
        lines += [f"## {gap} ({what})", "", "Best measure of each family (by |Ψ|, chosen on these same runs among the "
                  "family's *candidates*: a family with more candidates has better odds of a high best, and the "
                  "chosen measure's τ and interval are optimistic, as any winner's are):", "",
                  "| family | candidates | measure | τ | 95% interval | Ψ |", "| --- | --- | --- | --- | --- | --- |"]
        for b in summary[gap]["best_by_family"]:
            e = corr[b["measure"]]
            n, neg, short = e.get("at_interval_top"), e.get("margin_negative"), e.get("without_value")
            notes = ([f"{e['runs']} of {e['runs'] + short} runs"] if short else []) + (
                [f"{n} run{'s' if n > 1 else ''} censored"] if n else []) + (
                [f"{neg} run{'s' if neg > 1 else ''} with a negative margin"] if neg else [])
            measure = b["measure"] + "".join(f" ({t})" for t in notes)
            lines.append(f"| {b['family']} | {b['candidates']} | {measure} | {_fmt(b['tau'])} | "
                         f"[{_fmt(b['interval'][0])}, {_fmt(b['interval'][1])}] | {_fmt(b['Psi'])} |")
        lead = summary[gap]["lead"]
        if lead:
            head = f"On this grid `{lead['winner']}` leads `{lead['runner_up']}` by {lead['abs_psi_margin']:.2f} in |Ψ|"
            if lead["tau_intervals_overlap"] is None:
                lines += ["", f"{head}; without τ intervals to compare, the resampling noise of that lead is unknown."]
            else:
                overlap = "overlap" if lead["tau_intervals_overlap"] else "do not overlap"
                lines += ["", f"{head}; their τ intervals, each taken in the direction of its Ψ, {overlap}"
                          + (" (the lead is within the resampling noise)." if lead["tau_intervals_overlap"] else ".")]
        lines += ["", "| family | measure | runs | τ | 95% interval | Ψ | " + " | ".join(f"ψ `{a}`" for a in psi_axes)
                  + " |", "| --- | --- | --- | --- | --- | --- |" + " --- |" * len(psi_axes)]
        families = list(dict.fromkeys(ms.family for ms in MEASURES))
        for fam in families:
            names = sorted((n for n, e in corr.items() if e["family"] == fam), key=lambda n: _abs_psi(corr[n], gap),
                           reverse=True)
            for name in names:
                e, g = corr[name], corr[name][gap]
                per = " | ".join(f"{_fmt(g['axes'][a]['psi'])} ({g['axes'][a]['groups']})" for a in psi_axes)
                runs = (f"{e['runs']}" + (f" of {e['runs'] + e['without_value']}" if e.get("without_value") else "")
                        + (f" ({e['at_interval_top']} censored)" if e.get("at_interval_top") else "")
                        + (f" ({e['margin_negative']} negative margin)" if e.get("margin_negative") else ""))
                lines.append(f"| {fam} | {name} | {runs} | {_fmt(g['tau'])} | [{_fmt(g['interval']['low'])}, "
                             f"{_fmt(g['interval']['high'])}] | {_fmt(g['Psi'])} | {per} |")
        lines.append("")
    table = configuration_table(rows, skipped, psi_axes)
    cols = [c for c in (*DESCRIBED, "loss_gap", "error_gap", "train_accuracy") if any(c in e for e in table)]
    lines += ["## Per configuration (mean ± sd over seeds)", "",
              "| " + " | ".join(f"`{a}`" for a in psi_axes) + " | runs | " + " | ".join(cols) + " | skipped |",
              "|" + " --- |" * (len(psi_axes) + len(cols) + 2)]
    for e in table:
        cells = []
        for c in cols:
            v = e.get(c)
            cells.append("—" if v is None else f"{v['mean']:.3g}" + (f" ± {v['sd']:.2g}" if v["sd"] is not None
                                                                      else ""))
        why = "; ".join(sorted(set(e["skipped"])))[:120]
        lines.append("| " + " | ".join(str(e["axes"][a]) for a in psi_axes) + f" | {e['runs']} | "
                     + " | ".join(cells) + f" | {len(e['skipped'])}{' (' + why + ')' if why else ''} |")
    effects = axis_effects(rows, axes)
    ecols = [c for c in cols if any(c in e for e in effects)]
    if effects:
        lines += ["", "## Per axis (matched pairs)", "",
                  "Change of each quantity when one axis moves to its next value and every other coordinate — the "
                  "seed included — stays fixed: mean over the matched pairs [min, max]. Pairs with a skipped run "
                  "are not formed.", "",
                  "| axis | from → to | pairs | " + " | ".join(ecols) + " |", "|" + " --- |" * (len(ecols) + 3)]
        for e in effects:
            cells = ["—" if c not in e else f"{e[c]['mean']:+.3g} [{e[c]['min']:+.2g}, {e[c]['max']:+.2g}]"
                     for c in ecols]
            lines.append(f"| `{e['axis']}` | {e['from']} → {e['to']} | {e['pairs']} | " + " | ".join(cells) + " |")
    lines += ["", "## Runs used", "",
              "| run | id | " + " | ".join(f"`{a}`" for a in axes) + " | loss gap | error gap |",
              "| --- | --- |" + " --- |" * len(axes) + " --- | --- |"]
    for r in rows:
        lines.append(f"| {r.name} | `{r.run_id}` | " + " | ".join(str(r.params.get(a)) for a in axes)
                     + f" | {r.gaps['loss_gap']:.4f} | {r.gaps['error_gap']:.4f} |")
    lines += ["", "## Runs skipped or superseded", ""]
    lines += [f"- {s['name']} (`{s['run_id']}`): {s['reason']}" for s in skipped] or ["- none"]
    return "\n".join(lines) + "\n"
