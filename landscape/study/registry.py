"""Every measure ``landscape analyze`` ranks: its family, what it is, and how to read it from a run's final
metrics and params (the names the track stage logs: :mod:`landscape.tracking`), and the two gaps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Getter = Callable[[dict[str, float], dict[str, str]], float | None]


def _get(key: str) -> Getter:
    return lambda m, p: m.get(key)


def _ratio(num: str, den: str) -> Getter:
    def f(m: dict[str, float], p: dict[str, str]) -> float | None:
        a, b = m.get(num), m.get(den)
        return a / b if a is not None and b not in (None, 0) else None
    return f


def _over_radius2(m: dict[str, float], p: dict[str, str]) -> float | None:
    v, r = m.get("sharpness/directional"), p.get("probe.sharpness_radius")
    return v / float(r) ** 2 if v is not None and r is not None else None


@dataclass(frozen=True)
class Measure:
    name: str
    family: str
    what: str
    get: Getter


# every measure the report ranks, by family (the order of the families is the order of the report's sections)
MEASURES: list[Measure] = [
    Measure("lambda_max", "curvature", "λ_max of the probe-set Hessian", _get("curvature/lambda_max")),
    Measure("hessian_trace", "curvature", "tr(H), Hutchinson", _get("curvature/hessian_trace")),
    Measure("trace_per_parameter", "curvature", "tr(H)/n, the mean eigenvalue (normalized)",
            _ratio("curvature/hessian_trace", "model/num_params")),
    Measure("directional_sharpness", "sharpness", "paired random-direction sharpness at radius ρ",
            _get("sharpness/directional")),
    Measure("directional_sharpness_over_radius2", "sharpness", "sharpness / ρ² (normalized)", _over_radius2),
    Measure("worst_case_sharpness", "sharpness", "max over ‖d‖ ≤ ρ (projected gradient ascent)",
            _get("sharpness/worst_case")),
    Measure("adaptive_sharpness", "sharpness", "random-direction sharpness, d = |θ| ⊙ u",
            _get("sharpness/adaptive")),
    Measure("adaptive_worst_case_sharpness", "sharpness", "worst case over ‖d/|θ|‖ ≤ ρ_w",
            _get("sharpness/adaptive_worst_case")),
    Measure("lgdi", "stability", "(η/2) gᵀHg/‖g‖²", _get("stability/lgdi")),
    Measure("eta_lambda_max", "stability", "η·λ_max (normalized)", _get("stability/ratio")),
    Measure("eta_lambda_max_over_threshold", "stability", "η·λ_max / divergence threshold (normalized)",
            _ratio("stability/ratio", "stability/threshold")),
    Measure("grad_norm", "gradient", "‖∇L_P‖", _get("gradient/norm")),
    Measure("line_barrier", "connectivity", "loss barrier along the line (interpolate stage)",
            _get("summary/line/barrier_height")),
    Measure("connect_loss_barrier", "connectivity", "loss barrier between two SGD-noise copies",
            _get("summary/connect/loss_barrier")),
    Measure("connect_error_barrier", "connectivity", "error barrier between two SGD-noise copies",
            _get("summary/connect/error_barrier")),
    *(Measure(name, "norm & margin", what, _get(f"measures/{name}")) for name, what in (
        ("inverse_margin", "1/γ², γ the 10th-percentile output margin"),
        ("log_prod_spec", "Σ log ‖W‖₂²"), ("log_prod_spec_over_margin", "Σ log ‖W‖₂² − 2 log γ"),
        ("log_sum_spec", "log d + (1/d) Σ log ‖W‖₂²"), ("log_sum_spec_over_margin", "log.sum.of.spec over margin"),
        ("fro_over_spec", "Σ ‖W‖_F²/‖W‖₂²"), ("log_spec_orig_main", "Jiang's log.spec.orig.main"),
        ("log_spec_init_main", "Jiang's log.spec.init.main"), ("log_prod_fro", "Σ log ‖W‖_F²"),
        ("log_prod_fro_over_margin", "Σ log ‖W‖_F² − 2 log γ"), ("log_sum_fro", "log d + (1/d) Σ log ‖W‖_F²"),
        ("log_sum_fro_over_margin", "log.sum.of.fro over margin"), ("fro_dist", "Σ ‖W − W⁰‖_F²"),
        ("dist_spec_init", "Σ ‖W − W⁰‖₂²"), ("param_norm", "Σ ‖W‖_F²"), ("l2", "‖w‖₂"), ("l2_dist", "‖w − w⁰‖₂"),
        ("path_norm", "ℓ2 path norm"), ("path_norm_over_margin", "path norm / γ²"), ("params", "number of weights"))),
    *(Measure(name, "pac-bayes", what, _get(f"measures/{name}")) for name, what in (
        ("pacbayes_flatness", "1/σ*², N(0, σ²I)"), ("pacbayes_mag_flatness", "1/σ*², N(0, σ²w² + ε²)"),
        ("pacbayes_orig", "PAC-Bayes bound on ‖w‖"), ("pacbayes_init", "PAC-Bayes bound on ‖w − w⁰‖"),
        ("pacbayes_mag_orig", "magnitude-aware bound on w"), ("pacbayes_mag_init", "magnitude-aware bound on w − w⁰"))),
    *(Measure(name, "worst-case flatness", what, _get(f"measures/{name}")) for name, what in (
        ("sharpness_flatness", "1/α*², max over |u_i| ≤ α (Jiang's sharpness.flatness)"),
        ("sharpness_mag_flatness", "1/α*², max over |u_i| ≤ α|w_i| + ε (sharpness.mag.flatness)"))),
    *(Measure(name, "weight spectrum", what, _get(f"measures/{name}")) for name, what in (
        ("ww_alpha", "mean power-law α of the layers' ESDs (WeightWatcher)"),
        ("ww_alpha_weighted", "mean α̂ = α log λ_max (WeightWatcher)"), ("ww_stable_rank", "mean stable rank"),
        ("ww_log_norm", "mean log Frobenius norm (WeightWatcher)"),
        ("ww_log_spectral_norm", "mean log spectral norm (WeightWatcher)"),
        ("ww_log_alpha_norm", "mean log α-norm (WeightWatcher)"))),
    Measure("steps_to_loss", "optimization", "SGD steps until the running train loss < 0.1 (epoch resolution)",
            _get("measures/steps_to_loss")),
    Measure("hessian_outliers", "curvature", "eigenvalues separated from the Hessian's bulk (final epoch)",
            _get("curvature/outliers")),
    Measure("surface_nonconvex_fraction", "surface", "share of the curvature map with |λ_min/λ_max| > threshold",
            _get("summary/surface/nonconvex_fraction")),
]
# The flatness searches bisect their scale on [0, 2]. A search that moved up at every step (the accuracy never
# fell by the deviation: a network at chance) ends at the interval's top; its values are censored there. Newer
# runs carry the tag below (:mod:`landscape.tracking`); for older ones the censoring is read off the logged scale:
# after d upward steps it is 2 − 2^(1−d), d the search depth param.
CENSORED_TAG = "landscape.measures_at_interval_top"
SEARCHES = (  # (the logged scale, its depth param, the measures censored with it)
    ("measures/pacbayes_sigma", "measures.pacbayes_depth", ("pacbayes_flatness", "pacbayes_orig", "pacbayes_init")),
    ("measures/pacbayes_mag_sigma", "measures.pacbayes_depth",
     ("pacbayes_mag_flatness", "pacbayes_mag_orig", "pacbayes_mag_init")),
    ("measures/sharpness_alpha", "measures.sharpness_depth", ("sharpness_flatness",)),
    ("measures/sharpness_mag_alpha", "measures.sharpness_depth", ("sharpness_mag_flatness",)),
)


def censored_measures(metrics: dict[str, float | None], params: dict[str, str], tags: dict[str, str]) -> list[str]:
    """The measures of a run whose flatness search ended at the top of [0, 2] (sorted): those its
    :data:`CENSORED_TAG` names, and those whose logged scale is the last value of an all-upward search."""
    out = {n.strip() for n in tags.get(CENSORED_TAG, "").split(",") if n.strip()}
    for scale, depth_key, names in SEARCHES:
        v = metrics.get(scale)
        try:
            depth = int(params.get(depth_key, 15))
        except ValueError:
            depth = 15
        if v is not None and v >= 2.0 - 2.0 ** (1 - depth) - 1e-12:
            out.update(names)
    return sorted(n for n in out if n in {ms.name for ms in MEASURES})


# The measures with the margin γ in them. γ is the absolute value of the p-th percentile margin (as the reference
# code): where that margin is negative (at least p% of the training set misclassified) γ is the size of a wrong
# margin and these measures are no margin measures. Newer runs log the signed margin (measures/margin_signed);
# for older ones it is read off the train accuracy: the p-th percentile margin is ≤ 0 iff train error ≥ p/100.
MARGIN_MEASURES = ("inverse_margin", "log_prod_spec_over_margin", "log_sum_spec_over_margin",
                   "log_prod_fro_over_margin", "log_sum_fro_over_margin", "log_spec_orig_main", "log_spec_init_main",
                   "path_norm_over_margin")


def margin_negative(metrics: dict[str, float | None], params: dict[str, str]) -> bool | None:
    """Whether the run's margin percentile fell on a misclassified example (None: no margin measures logged)."""
    if metrics.get("measures/margin") is None:
        return None
    if metrics.get("measures/margin_signed") is not None:
        return metrics["measures/margin_signed"] < 0
    acc = metrics.get("accuracy/train")
    if acc is None:
        return None
    try:
        p = float(params.get("measures.margin_percentile", 10.0))
    except ValueError:
        return None
    return 1.0 - acc >= p / 100.0 - 1e-9  # accuracies are multiples of 1/m: 1e-9 only absorbs float rounding


# described per configuration (mean ± sd over seeds) in every report, beside the gaps and accuracies
DESCRIBED = ("lambda_max", "hessian_outliers", "surface_nonconvex_fraction", "line_barrier")
GAPS = {"loss_gap": "test − train loss", "error_gap": "test − train error"}
