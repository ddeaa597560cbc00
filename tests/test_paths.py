"""The line between two parameter vectors and the barrier heights along paths."""

import math

import numpy as np
import pytest
import torch

from landscape.evaluation import evaluate
from landscape.models import MLP
from landscape.parameters import assign, flatten
from landscape.paths.barrier import barrier, path_barriers
from landscape.paths.line import alpha_grid, line_losses


def test_barrier_is_the_largest_rise_above_the_chord_not_the_rise_at_the_maximum():
    # L(α) = 1 − 0.9α + 0.2 sin(πα): the maximum of L is at α = 0 (an endpoint), so "chord at argmax L"
    # gives 0, but the path rises 0.2 above the chord at α = 0.5
    a = np.linspace(0, 1, 101)
    res = barrier(a.tolist(), (1 - 0.9 * a + 0.2 * np.sin(np.pi * a)).tolist())
    assert res["barrier"] == pytest.approx(0.2, abs=1e-12)
    assert res["alpha_star"] == pytest.approx(0.5, abs=1e-12)
    assert (res["start"], res["end"]) == pytest.approx((1.0, 0.1), abs=1e-12)
    # Frankle's instability: max along the path minus the mean of the endpoints
    assert res["frankle"] == pytest.approx(1.0 - 0.55, abs=1e-12)


def test_planted_bump_of_known_height_and_position():
    a = np.linspace(0, 1, 401)
    chord = 2.0 + 1.5 * a
    bump = 0.35 * np.exp(-((a - 0.7) ** 2) / (2 * 0.03**2))
    res = barrier(a.tolist(), (chord + bump).tolist())
    assert res["barrier"] == pytest.approx(0.35, rel=1e-9)
    assert res["alpha_star"] == pytest.approx(0.7, abs=1e-12)


def test_convex_path_has_zero_barrier_and_extension_is_ignored():
    a = alpha_grid(11, -0.5, 1.5)
    assert 0.0 in a and 1.0 in a and a[0] == -0.5 and a[-1] == 1.5
    loss = [10.0 if x < 0 or x > 1 else (x - 0.4) ** 2 for x in a]  # huge values outside [0, 1] do not count
    res = barrier(a, loss)
    assert res["barrier"] == 0.0 and res["alpha_star"] in (0.0, 1.0)
    assert res["frankle"] == pytest.approx(0.36 - 0.5 * (0.16 + 0.36))  # max is the endpoint α = 0


def test_error_barriers_use_errors_not_losses():
    # loss is flat along the path but the accuracy dips in the middle: only the error barrier sees it
    a = [0.0, 0.25, 0.5, 0.75, 1.0]
    rows = [{"alpha": x, "loss": 1.0, "test_loss": 1.0, "train_accuracy": 0.9 - (0.3 if x == 0.5 else 0.0),
             "test_accuracy": 0.8} for x in a]
    res = path_barriers(rows)
    assert res["barrier_height"] == 0.0 and res["test_loss_barrier"] == 0.0
    assert res["train_error_barrier"] == pytest.approx(0.3)
    assert res["train_error_instability_frankle"] == pytest.approx(0.4 - 0.1)
    assert res["test_error_barrier"] == pytest.approx(0.0)


def test_line_losses_follow_the_interpolated_model():
    torch.manual_seed(0)
    model = MLP(10, [8], "tanh", 3).double()
    other = MLP(10, [8], "tanh", 3).double()
    x, y = torch.randn(30, 10, dtype=torch.float64), torch.randint(0, 3, (30,))
    ta, tb = flatten(model), flatten(other)
    rows = line_losses(model, ta, tb, [0.0, 0.25, 1.0], (x, y), (x[:10], y[:10]))
    probe = MLP(10, [8], "tanh", 3).double()
    for row in rows:
        assign(probe, (1 - row["alpha"]) * ta + row["alpha"] * tb)
        assert row["loss"] == pytest.approx(evaluate(probe, x, y)[0], rel=1e-12)
        assert row["test_loss"] == pytest.approx(evaluate(probe, x[:10], y[:10])[0], rel=1e-12)
    assert torch.equal(flatten(model), ta)  # the model itself is untouched
    assert math.isfinite(path_barriers(rows)["barrier_height"])
