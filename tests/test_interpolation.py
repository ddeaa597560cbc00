"""The line between two parameter vectors and its barrier height."""

import math

import numpy as np
import pytest
import torch

from landscape.evaluation import evaluate
from landscape.interpolation import alpha_grid, barrier_height, line_losses
from landscape.models import MLP
from landscape.parameters import assign, flatten


def test_barrier_height_of_a_known_bump():
    a = np.linspace(0, 1, 2001)
    loss = 1.0 - 0.5 * a + 0.8 * np.sin(np.pi * a)
    res = barrier_height(a.tolist(), loss.tolist())
    a_star = math.acos(0.5 / (0.8 * math.pi)) / math.pi  # dL/dα = 0
    assert res["alpha_star"] == pytest.approx(a_star, abs=0.5 / 2000)  # the grid point next to α*
    # barrier = L(α*) − chord(α*) = 0.8 sin(πα*) at the sampled α*, to rounding
    assert res["barrier_height"] == pytest.approx(0.8 * math.sin(math.pi * res["alpha_star"]), abs=1e-12)
    assert res["barrier_height"] == pytest.approx(0.8 * math.sin(math.pi * a_star), abs=2e-4)
    assert (res["loss_start"], res["loss_end"]) == pytest.approx((1.0, 0.5), abs=1e-12)


def test_monotone_path_has_no_barrier_and_extension_is_ignored():
    a = alpha_grid(11, -0.5, 1.5)
    assert 0.0 in a and 1.0 in a and a[0] == -0.5 and a[-1] == 1.5
    loss = [10.0 if x < 0 or x > 1 else 2.0 - x for x in a]  # huge values outside [0, 1] do not count
    res = barrier_height(a, loss)
    assert res["barrier_height"] == 0.0 and res["alpha_star"] == 0.0


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
