"""Random-direction sharpness, lgdi and the stability thresholds against their derivations."""

import pytest
import torch

from landscape.curvature.hvp import HessianOperator
from landscape.evaluation import loss_function, losses_function
from landscape.geometry import lgdi, stability_threshold
from landscape.parameters import flatten
from landscape.sharpness import directional_sharpness, random_directions, trace_prediction
from tests.helpers import dense_hessian, make_quadratic, quad_loss_value, tiny_network

SPECTRUM = [6.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.8, 0.5, 0.2, 0.1, -0.5, -1.0]


def test_paired_sharpness_is_exact_quadratic_form_on_a_quadratic():
    model, c, s, _, H = make_quadratic(SPECTRUM)
    theta = model.theta.detach().clone()
    res = directional_sharpness(lambda t: quad_loss_value(model, c, s, t), theta, radius=0.3, directions=5, seed=2)
    d = random_directions(len(SPECTRUM), 5, 0.3, 2, torch.float64)
    assert torch.allclose(d.norm(dim=1), torch.full((5,), 0.3, dtype=torch.float64))
    expected = [0.5 * float(dk @ H @ dk) for dk in d]  # (L(θ+d) + L(θ−d) − 2L(θ))/2 = ½ dᵀHd exactly
    assert list(res.per_direction) == pytest.approx(expected, rel=1e-8)


def test_paired_sharpness_matches_trace_relation_on_a_quadratic():
    model, c, s, _, H = make_quadratic(SPECTRUM)
    theta = model.theta.detach().clone()
    res = directional_sharpness(lambda t: quad_loss_value(model, c, s, t), theta, 0.3, 4000, seed=0)
    pred = trace_prediction(float(torch.trace(H)), 0.3, len(SPECTRUM))
    assert abs(res.value - pred) <= 4 * res.stderr
    assert res.stderr < 0.1 * pred


def test_paired_sharpness_matches_trace_relation_on_a_tanh_network():
    model, x, y = tiny_network("tanh")
    H = dense_hessian(model, x, y)
    theta = flatten(model)
    radius = 1e-2
    res = directional_sharpness(loss_function(model, x, y), theta, radius, 600, seed=0)
    pred = trace_prediction(float(torch.trace(H)), radius, theta.numel())
    assert abs(res.value - pred) <= 4 * res.stderr + 1e-3 * abs(pred)
    assert res.stderr < 0.15 * abs(pred)


def test_lgdi_closed_form_and_one_step_loss_change_on_a_quadratic():
    model, c, s, loss_fn, H = make_quadratic(SPECTRUM)
    op = HessianOperator(model, c, s, loss_fn=loss_fn)
    g, lr = op.grad, 0.2
    value = lgdi(lr, g, op.matvec(g))
    assert value == pytest.approx(0.5 * lr * float(g @ H @ g) / float(g @ g), rel=1e-12)
    theta = model.theta.detach()
    actual = quad_loss_value(model, c, s, theta - lr * g) - quad_loss_value(model, c, s, theta)
    assert actual == pytest.approx(-lr * float(g @ g) * (1 - value), rel=1e-10)  # exact on a quadratic


def test_lgdi_predicts_one_step_change_for_small_lr_on_a_network():
    model, x, y = tiny_network("tanh")
    op = HessianOperator(model, x, y)
    g, theta = op.grad, flatten(model)
    L = loss_function(model, x, y)
    for lr in (0.5, 0.05):
        value = lgdi(lr, g, op.matvec(g))
        predicted = -lr * float(g @ g) * (1 - value)
        actual = L(theta - lr * g) - L(theta)
        # the Taylor form is second order: its error is O(η³), tiny relative to the change for small η
        assert actual == pytest.approx(predicted, rel=0.02 if lr == 0.5 else 1e-3)


def _diverges(lr: float, momentum: float, nesterov: bool, steps: int = 800) -> bool:
    x = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = torch.optim.SGD([x], lr=lr, momentum=momentum, nesterov=nesterov)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * x * x).sum().backward()  # f(x) = λx²/2 with λ = 1
        opt.step()
        if abs(float(x.detach())) > 1e8:
            return True
    return abs(float(x.detach())) > 1.0


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_stability_threshold_matches_simulated_divergence_boundary(momentum, nesterov):
    if nesterov and momentum == 0.0:
        formula = 2.0  # torch refuses Nesterov without momentum; it is plain GD
        nesterov = False
    else:
        formula = stability_threshold(momentum, nesterov)
    lo, hi = 0.1, 10.0
    for _ in range(16):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _diverges(mid, momentum, nesterov) else (mid, hi)
    assert (lo + hi) / 2 == pytest.approx(formula, rel=0.01)


def test_batched_losses_give_the_same_sharpness_as_one_at_a_time():
    model, x, y = tiny_network("relu", n_samples=64, seed=2)
    theta = flatten(model)
    one = directional_sharpness(loss_function(model, x, y, 16), theta, 0.3, 5, seed=1)
    many = directional_sharpness(loss_function(model, x, y, 16), theta, 0.3, 5, seed=1,
                                 losses=losses_function(model, x, y, 16))
    assert many.per_direction == pytest.approx(one.per_direction, rel=1e-9, abs=1e-15)
