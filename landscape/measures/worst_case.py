"""Worst-case (sharpness-bound) flatness (Jiang et al. 2020: ``sharpness.flatness``, ``sharpness.mag.flatness``):
the PAC-Bayes search with the expectation over a Gaussian replaced by a maximum over a box.

α* is the largest α such that the training accuracy at the worst perturbation in the box drops by at most the
``deviation`` (Jiang: 0.1):

* plain: |u_i| ≤ α for every parameter;
* magnitude-aware: |u_i| ≤ α|w_i| + ε (ε = ``magnitude_eps``, Jiang: 1e-3).

Measures: ``sharpness_flatness`` = 1/α*², ``sharpness_mag_flatness`` = 1/α*_mag² (and the α* themselves).

The maximum is estimated from below by projected sign-gradient ascent on the training cross-entropy (ℓ∞ PGD):
u₀ = 0, u ← clip(u + η r ⊙ sign ∇L(θ + u), −r, r), r the box's half-widths, η = 2.5 / ``steps`` (Madry et al.'s
step), ``steps`` ascent steps; the accuracy drop reported is the largest over all iterates (every gradient
evaluation also gives the accuracy at its point) and the last one. Once a drop exceeds deviation + tolerance the
bisection's decision is known (a larger maximum only confirms it), so that step stops early; the first gradient,
at θ, is shared by every step. The bisection is the PAC-Bayes one (:mod:`landscape.measures.pacbayes`): on
Jiang's interval [0, 2], at most ``depth`` halvings, stopping when the drop is within ``tolerance`` of the
deviation. Because ascent finds a lower bound of the maximum, α* is an upper bound of the exact one (a flatness
that is too low, never too high); the record keeps each step's drop and the ascent step that found it. A
network with batch norm is perturbed with its statistics fixed (the network at θ), as everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from landscape.evaluation import evaluate, per_example_loss
from landscape.measures.pacbayes import bisection
from landscape.parameters import flatten, unflatten

STEP = 2.5  # η·steps: the ascent can cross the box (2r) in 80% of its steps


@dataclass
class AlphaSearch:
    alpha: float
    steps: list[dict[str, float]] = field(default_factory=list)  # alpha, accuracy, displacement, best_step
    converged: bool = False  # stopped within the tolerance (else: the depth ran out)
    gradient_evaluations: int = 0
    at_top: bool = False  # never displaced by the deviation, even near 2: α* ≥ 2 as far as the ascent found


def accuracy_and_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096
                          ) -> Any:
    """θ ↦ (accuracy over (x, y) at θ, ∇L(θ) of the mean cross-entropy), the model in eval mode, untouched."""

    def value(theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        was_training = model.training
        model.eval()
        t = theta.detach().clone().requires_grad_(True)
        params = unflatten(t, model)
        right = 0
        try:
            for i in range(0, len(x), batch_size):
                out = functional_call(model, params, (x[i : i + batch_size],))
                (per_example_loss(out, y[i : i + batch_size]).sum() / len(x)).backward()
                right += int((out.detach().argmax(-1) == y[i : i + batch_size]).sum())
        finally:
            model.train(was_training)
        return right / len(x), t.grad.detach()

    return value


def worst_accuracy(acc_grad: Any, accuracy_at: Any, theta: torch.Tensor, half_width: torch.Tensor,
                   steps: int, first_gradient: torch.Tensor, stop_below: float) -> tuple[float, int, int]:
    """min over the iterates of ℓ∞ PGD in the box |u| ≤ ``half_width`` of the accuracy at θ + u: (accuracy, the
    step that found it, gradient evaluations); stops once the accuracy is below ``stop_below``."""
    u = torch.zeros_like(theta)
    g, worst, best_step, evaluations = first_gradient, 2.0, 0, 0
    eta = STEP / steps
    for step in range(1, steps + 1):
        u = torch.minimum(torch.maximum(u + eta * half_width * torch.sign(g), -half_width), half_width)
        if step == steps:
            acc = accuracy_at(theta + u)
        else:
            acc, g = acc_grad(theta + u)
            evaluations += 1
        if acc < worst:
            worst, best_step = acc, step
        if worst < stop_below:
            break
    return worst, best_step, evaluations


def alpha_search(acc_grad: Any, accuracy_at: Any, theta: torch.Tensor, base_accuracy: float,
                 first_gradient: torch.Tensor, scale: torch.Tensor | None, eps: float, deviation: float, depth: int,
                 steps: int, tolerance: float) -> AlphaSearch:
    """The bisection of the module docstring; ``scale``: |w| for the magnitude-aware box (None: plain)."""
    evaluations = 0

    def displacement_at(alpha: float) -> tuple[float, dict[str, float]]:
        nonlocal evaluations
        half = torch.full_like(theta, alpha) if scale is None else alpha * scale + eps
        acc, best_step, evals = worst_accuracy(acc_grad, accuracy_at, theta, half, steps, first_gradient,
                                               base_accuracy - deviation - tolerance)
        evaluations += evals
        disp = base_accuracy - acc
        return disp, {"alpha": alpha, "accuracy": acc, "displacement": disp, "best_step": best_step}

    alpha, records, converged, at_top = bisection(displacement_at, deviation, depth, tolerance)
    return AlphaSearch(alpha, records, converged, evaluations, at_top)


def sharpness_flatness_measures(model: nn.Module, x: torch.Tensor, y: torch.Tensor, deviation: float = 0.1,
                                depth: int = 15, steps: int = 10, tolerance: float = 0.01,
                                magnitude_eps: float = 1e-3, batch_size: int = 4096) -> dict[str, Any]:
    """Both searches on (x, y) for ``model`` (the network at θ): ``values``, the settings and every step."""
    theta = flatten(model)
    base_acc = evaluate(model, x, y, batch_size)[1]
    acc_grad = accuracy_and_gradient(model, x, y, batch_size)
    first = acc_grad(theta)[1]

    def accuracy_at(t: torch.Tensor) -> float:
        return evaluate(model, x, y, batch_size, theta=t)[1]

    plain = alpha_search(acc_grad, accuracy_at, theta, base_acc, first, None, 0.0, deviation, depth, steps, tolerance)
    mag = alpha_search(acc_grad, accuracy_at, theta, base_acc, first, theta.abs(), magnitude_eps, deviation, depth,
                       steps, tolerance)
    values = {"sharpness_flatness": 1 / plain.alpha**2, "sharpness_mag_flatness": 1 / mag.alpha**2,
              "sharpness_alpha": plain.alpha, "sharpness_mag_alpha": mag.alpha}
    return {"values": values, "base_accuracy": base_acc, "examples": len(y),
            "settings": {"deviation": deviation, "depth": depth, "ascent_steps": steps, "step": f"{STEP}/steps",
                         "tolerance": tolerance, "magnitude_eps": magnitude_eps, "interval": [0.0, 2.0],
                         "ascent": "ℓ∞ projected sign-gradient ascent on the cross-entropy from u = 0"},
            "at_interval_top": [*(["sharpness_flatness", "sharpness_alpha"] if plain.at_top else []),
                                *(["sharpness_mag_flatness", "sharpness_mag_alpha"] if mag.at_top else [])],
            "search": {"plain": {"converged": plain.converged, "at_top": plain.at_top,
                                 "gradient_evaluations": plain.gradient_evaluations, "steps": plain.steps},
                       "magnitude": {"converged": mag.converged, "at_top": mag.at_top,
                                     "gradient_evaluations": mag.gradient_evaluations, "steps": mag.steps}}}
