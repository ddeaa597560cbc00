"""PAC-Bayes flatness (Jiang et al. 2020: ``pacbayes.flatness``, ``pacbayes.mag.flatness`` and the bounds built on
them), by bisection on the perturbation scale with a Monte-Carlo estimate per step.

σ* is the largest σ such that the expected training accuracy under a Gaussian perturbation u of all parameters
falls by at most the ``deviation`` (Jiang: 0.1):

* plain: u ~ N(0, σ² I);
* magnitude-aware: u_i ~ N(0, σ² w_i² + ε²) (ε = ``magnitude_eps``, Jiang: 1e-3).

Bisection on [0, 2] (Jiang's interval): at each of at most ``depth`` steps the displacement |E_u acc(θ + u) −
acc(θ)| is estimated from ``samples`` seeded draws (all evaluated in one pass over the examples); the search stops
early when it is within ``tolerance`` of the deviation (Jiang: 0.01), moves down when above, up when below.
Measures: ``pacbayes_flatness`` = 1/σ*², ``pacbayes_mag_flatness`` = 1/σ*_mag², and the bounds
``pacbayes_orig`` = ‖w‖²/(4σ*²) + log(m/σ*) + 10, ``pacbayes_init`` the same with w − w⁰, and the magnitude-aware
``pacbayes_mag_orig`` / ``…_init`` = ¼ Σ_i log((ε² + (σ*² + 1)‖v‖²/n) / (ε² + σ*²(w_i − w⁰_i)²)) + log(m/σ*) + 10
(v = w or w − w⁰; weights only, n of them; m the examples used). A search whose every step moved up (the
accuracy never fell by the deviation, e.g. a network at chance) ends at the interval's top: σ* ≥ 2 is censored
there, and its values are listed in ``at_interval_top`` (ranks still place them, tied, at the flat end).

Where this departs from the public reimplementation: its ``torch.normal(0, σ²)`` passes σ² as the *standard
deviation* (and σ²w² + ε² likewise), so its σ is the square root of the paper's; we follow the paper (standard
deviation σ, variance σ²w² + ε²). A network with batch norm is perturbed with its statistics fixed (the network at
θ), as the sharpness measures are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from landscape.evaluation import evaluate, evaluate_many
from landscape.parameters import flatten

SEED_OFFSET = 10348628753  # Jiang's generator offset, kept so that a seed means the same draws in spirit
# the values a search that ended at the interval's top leaves censored there (listed in ``at_interval_top``)
PLAIN_AT_TOP = ["pacbayes_flatness", "pacbayes_orig", "pacbayes_init", "pacbayes_sigma"]
MAG_AT_TOP = ["pacbayes_mag_flatness", "pacbayes_mag_orig", "pacbayes_mag_init", "pacbayes_mag_sigma"]


@dataclass
class SigmaSearch:
    sigma: float
    steps: list[dict[str, float]] = field(default_factory=list)  # sigma, mean accuracy, displacement
    converged: bool = False  # stopped within the tolerance (else: the depth ran out)
    at_top: bool = False  # never displaced by the deviation, even near 2: σ* ≥ 2, the value a lower bound


def bisection(displacement_at: Any, deviation: float, depth: int, tolerance: float
              ) -> tuple[float, list[dict[str, float]], bool, bool]:
    """Jiang's search on [0, 2]: at most ``depth`` halvings, stopping when the displacement is within
    ``tolerance`` of the ``deviation``, moving down when above, up when below. ``displacement_at(s)`` returns
    (displacement, the step's record); returns (the last s, the records, stopped within the tolerance, at the
    top: every step moved up, so the scale* lies at or above the interval's end and the value is censored there,
    as for a network at chance whose accuracy cannot fall by the deviation)."""
    lower, upper, value, steps = 0.0, 2.0, 1.0, []
    for _ in range(depth):
        value = (lower + upper) / 2
        disp, record = displacement_at(value)
        steps.append(record)
        if abs(disp - deviation) < tolerance:
            return value, steps, True, False
        if disp > deviation:
            upper = value
        else:
            lower = value
    return value, steps, False, upper == 2.0


def sigma_search(accuracy_at: Any, base_accuracy: float, scale: torch.Tensor | None, eps: float, deviation: float,
                 depth: int, samples: int, tolerance: float, seed: int, n: int) -> SigmaSearch:
    """The bisection of the module docstring. ``accuracy_at(thetas_offsets)``: the accuracies (one per row) at
    θ + u for the (samples, n) perturbations u; ``scale``: |w| for the magnitude-aware search (None: plain)."""
    g = torch.Generator().manual_seed(SEED_OFFSET + seed)

    def displacement_at(sigma: float) -> tuple[float, dict[str, float]]:
        z = torch.randn(samples, n, generator=g, dtype=torch.float64)
        std = sigma if scale is None else torch.sqrt(sigma**2 * scale.double() ** 2 + eps**2)
        acc = float(accuracy_at(z * std).mean())
        disp = abs(acc - base_accuracy)
        return disp, {"sigma": sigma, "accuracy": acc, "displacement": disp}

    return SigmaSearch(*bisection(displacement_at, deviation, depth, tolerance))


def pacbayes_measures(model: nn.Module, init: nn.Module, x: torch.Tensor, y: torch.Tensor, deviation: float = 0.1,
                      depth: int = 15, samples: int = 10, tolerance: float = 0.01, seed: int = 0,
                      magnitude_eps: float = 1e-3, batch_size: int = 4096) -> dict[str, Any]:
    """Both searches on (x, y) for ``model`` (the network at θ), and the measures built on them."""
    from landscape.measures.norms import folded_weights

    theta = flatten(model)
    base_acc = evaluate(model, x, y, batch_size)[1]

    def accuracy_at(offsets: torch.Tensor) -> torch.Tensor:
        return evaluate_many(model, theta + offsets.to(theta.dtype), x, y, batch_size)[1]

    plain = sigma_search(accuracy_at, base_acc, None, 0.0, deviation, depth, samples, tolerance, seed, theta.numel())
    mag = sigma_search(accuracy_at, base_acc, theta.abs(), magnitude_eps, deviation, depth, samples, tolerance, seed,
                       theta.numel())
    w = torch.cat([m.reshape(-1) for _, m in folded_weights(model)])
    w0 = torch.cat([m.reshape(-1) for _, m in folded_weights(init)])
    m, nw = len(y), w.numel()
    s, sm, eps = plain.sigma, mag.sigma, magnitude_eps

    def bound(v: torch.Tensor) -> float:
        return float(v.norm() ** 2 / (4 * s**2)) + math.log(m / s) + 10

    def mag_bound(v: torch.Tensor) -> float:
        num = eps**2 + (sm**2 + 1) * float(v.norm() ** 2) / nw
        den = eps**2 + sm**2 * (w - w0) ** 2
        return float(0.25 * torch.log(num / den).sum()) + math.log(m / sm) + 10

    values = {"pacbayes_flatness": 1 / s**2, "pacbayes_mag_flatness": 1 / sm**2,
              "pacbayes_orig": bound(w), "pacbayes_init": bound(w - w0),
              "pacbayes_mag_orig": mag_bound(w), "pacbayes_mag_init": mag_bound(w - w0),
              "pacbayes_sigma": s, "pacbayes_mag_sigma": sm}
    return {"values": values, "base_accuracy": base_acc, "examples": m,
            "settings": {"deviation": deviation, "depth": depth, "samples": samples, "tolerance": tolerance,
                         "seed": seed, "magnitude_eps": eps, "interval": [0.0, 2.0]},
            "at_interval_top": [*(PLAIN_AT_TOP if plain.at_top else []), *(MAG_AT_TOP if mag.at_top else [])],
            "search": {"plain": {"converged": plain.converged, "at_top": plain.at_top, "steps": plain.steps},
                       "magnitude": {"converged": mag.converged, "at_top": mag.at_top, "steps": mag.steps}}}
