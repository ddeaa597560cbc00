"""Does λ_max settle at the stability threshold? The trajectory of r_t = η·λ_max(θ_t) / threshold of one run.

Cohen et al. 2021 ("edge of stability"): under full-batch gradient descent λ_max rises ("progressive
sharpening") until η·λ_max reaches the threshold (2 for GD, 2(1+β) with heavy-ball momentum) and then hovers
near it while the loss keeps decreasing, non-monotonically. Per run:

* ``reach_epoch``: the first probed epoch (a step, under full-batch GD) with r ≥ ``reach_fraction`` (0.9);
* ``after``: mean, standard deviation, min and max of r over the probed epochs from there on, and how many;
* ``diverged``: whether training diverged (then r after divergence is unknown, not small).
"""

from __future__ import annotations

import statistics
from typing import Any


def stability_summary(records: list[dict[str, Any]], reach_fraction: float = 0.9) -> dict[str, Any]:
    """Summary of one run's η·λ_max / threshold trajectory from its probe records."""
    finite = [r for r in records if not r.get("diverged") and r.get("lambda_max") is not None]
    diverged = any(r.get("diverged") for r in records)
    threshold = finite[0].get("stability_threshold") if finite else None
    out: dict[str, Any] = {"threshold": threshold, "reach_fraction": reach_fraction, "diverged": diverged,
                           "probed_epochs": [r["epoch"] for r in finite]}
    if threshold is None:
        out["note"] = ("no stability threshold for this optimizer (Adam: η·λ_max of the raw Hessian has none)"
                       if finite else "no finite checkpoint was probed")
        return out
    ratios = [r["stability_ratio"] / threshold for r in finite]
    out["ratio_over_threshold"] = ratios
    reach = next((i for i, v in enumerate(ratios) if v >= reach_fraction), None)
    out["reach_epoch"] = finite[reach]["epoch"] if reach is not None else None
    after = ratios[reach:] if reach is not None else []
    out["after"] = {
        "count": len(after),
        "mean": statistics.fmean(after) if after else None,
        "std": statistics.stdev(after) if len(after) > 1 else None,
        "min": min(after) if after else None,
        "max": max(after) if after else None,
    }
    out["max_ratio_over_threshold"] = max(ratios) if ratios else None
    return out
