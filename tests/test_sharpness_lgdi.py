"""Random-direction sharpness, lgdi and the stability thresholds against their derivations."""

import pytest
import torch

from landscape.curvature.hvp import HessianOperator
from landscape.evaluation import loss_and_gradient, loss_function, losses_function
from landscape.geometry import lgdi, stability_threshold
from landscape.parameters import flatten
from landscape.sharpness import directional_sharpness, random_directions, trace_prediction, worst_case_sharpness
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


# ------------------------------------------------------------------------------ worst-case and adaptive


def _quadratic_loss_and_grad(model, c, s):
    def f(theta):
        t = theta.detach().clone().requires_grad_(True)
        r = t - c
        value = (0.5 * s * ((r @ model.A) * r).sum(1)).mean()
        value.backward()
        return float(value), t.grad
    return f


def test_worst_case_on_a_quadratic_at_its_minimum_is_half_rho_squared_lambda_max():
    model, c, s, _, H = make_quadratic(SPECTRUM)
    minimum = (s[:, None] * c).sum(0) / s.sum()  # ∇L = A·mean(s_i(θ − c_i)) = 0 here
    res = worst_case_sharpness(_quadratic_loss_and_grad(model, c, s), minimum, 0.3, steps=200)
    lam = float(torch.linalg.eigvalsh(H)[-1])
    assert res.value == pytest.approx(0.5 * 0.3**2 * lam, rel=1e-4)


def test_one_ascent_step_is_sams_step_and_worst_case_bounds_the_average():
    model, x, y = tiny_network("tanh", n_samples=60, seed=1)
    theta = flatten(model)
    lg = loss_and_gradient(model, x, y, 16)
    base, g = lg(theta)
    one = worst_case_sharpness(lg, theta, 0.2, steps=1)
    sam = lg(theta + 0.2 * g / g.norm())[0] - base
    assert one.value == pytest.approx(sam, rel=1e-12) and one.best_step == 1
    avg = directional_sharpness(loss_function(model, x, y), theta, 0.2, 8, seed=0)
    many = worst_case_sharpness(lg, theta, 0.2, steps=10, floor=avg.max_rise)
    assert many.value >= one.value and many.value >= avg.max_rise >= avg.value
    assert many.value > 5 * avg.value  # the gradient direction: far sharper than random directions


def _rescaled_relu_net(c: float):
    torch.manual_seed(0)
    from landscape.models import MLP

    model = MLP(6, [12], "relu", 3).double()
    with torch.no_grad():
        model.net[0].weight.mul_(c)
        model.net[0].bias.mul_(c)
        model.net[2].weight.div_(c)
    return model


def test_adaptive_sharpness_is_invariant_to_relu_rescaling_and_plain_sharpness_is_not():
    x = torch.randn(40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(6))
    a, b = _rescaled_relu_net(1.0), _rescaled_relu_net(4.0)
    ta, tb = flatten(a), flatten(b)
    torch.testing.assert_close(a(x), b(x))  # the same function
    adaptive = [directional_sharpness(loss_function(m, x, y), t, 0.5, 6, seed=1, scale=t.abs()).value
                for m, t in ((a, ta), (b, tb))]
    plain = [directional_sharpness(loss_function(m, x, y), t, 0.5, 6, seed=1).value for m, t in ((a, ta), (b, tb))]
    assert adaptive[0] == pytest.approx(adaptive[1], rel=1e-9)
    assert abs(plain[0] - plain[1]) > 0.1 * abs(plain[0])
    worst = [worst_case_sharpness(loss_and_gradient(m, x, y), t, 0.5, steps=4, scale=t.abs()).value
             for m, t in ((a, ta), (b, tb))]
    assert worst[0] == pytest.approx(worst[1], rel=1e-8)


def test_worst_cases_record_the_norm_of_the_perturbation_they_report():
    """Plain: ascent ends on the sphere, ‖d‖ = ρ. Adaptive: the ellipsoid ‖d/s‖ ≤ ρ_w with one large scale
    coordinate; ascent concentrates u there, so ‖d‖ lands far above a random u's ρ_w‖s‖/√n and at most
    ρ_w·max(s) — the reason the worst case needs a radius of its own."""
    model, c, s, _, _ = make_quadratic([1.0] * 9 + [4.0], seed=3)
    minimum = (s[:, None] * c).sum(0) / s.sum()
    lg = _quadratic_loss_and_grad(model, c, s)
    plain = worst_case_sharpness(lg, minimum, 0.3, steps=20)
    assert plain.distance == pytest.approx(0.3, rel=1e-9)
    scale = torch.full_like(minimum, 0.1)
    scale[0] = 2.0
    adaptive = worst_case_sharpness(lg, minimum, 0.3, steps=20, scale=scale)
    assert 0.3 * float(scale.norm()) / len(scale) ** 0.5 * 2 < adaptive.distance <= 0.3 * 2.0 + 1e-12
    random_floor = worst_case_sharpness(lg, minimum, 0.3, steps=1, floor=1e9, floor_distance=0.25)
    assert (random_floor.value, random_floor.best_step, random_floor.distance) == (1e9, 0, 0.25)
