"""Losses at one or many parameter vectors: the batched paths against a plain forward pass."""

import pytest
import torch
from torch import nn

from landscape.evaluation import evaluate, evaluate_many, per_example_loss
from landscape.models import MLP
from landscape.parameters import assign, flatten
from tests.helpers import tiny_network


def reference(model, theta, x, y, kind):
    probe = MLP(6, [12, 12], model.spec["activation"], 3).double()
    assign(probe, theta)
    with torch.no_grad():
        out = probe(x)
    loss = per_example_loss(out, y, kind).mean()
    return float(loss), float((out.argmax(1) == y).double().mean())


@pytest.mark.parametrize("kind", ["cross_entropy", "mse"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_many_parameter_sets_in_one_pass_match_one_at_a_time(kind, activation):
    model, x, y = tiny_network(activation, n_samples=50, seed=1)
    theta = flatten(model)
    g = torch.Generator().manual_seed(0)
    thetas = theta + 0.2 * torch.randn(7, theta.numel(), generator=g, dtype=torch.float64)
    losses, accs = evaluate_many(model, thetas, x, y, batch_size=20, loss=kind)
    for j in range(7):
        ref_loss, ref_acc = reference(model, thetas[j], x, y, kind)
        assert float(losses[j]) == pytest.approx(ref_loss, rel=1e-12)
        assert float(accs[j]) == ref_acc
    assert torch.equal(flatten(model), theta)  # the model is untouched


def test_mse_is_half_the_squared_error_on_one_hot_targets():
    out = torch.tensor([[1.0, 0.5, -1.0]], dtype=torch.float64)
    assert float(per_example_loss(out, torch.tensor([0]), "mse")[0]) == pytest.approx(0.5 * (0 + 0.25 + 1.0))


class Odd(nn.Module):
    """Not the package's MLP: evaluated through vmap over functional_call."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, 3)

    def forward(self, x):
        return self.b(torch.sin(self.a(x)))


def test_generic_models_go_through_vmap_with_the_same_values():
    torch.manual_seed(0)
    model = Odd().double()
    x = torch.randn(30, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    theta = flatten(model)
    thetas = theta + 0.1 * torch.randn(4, theta.numel(), dtype=torch.float64)
    losses, _ = evaluate_many(model, thetas, x, y, batch_size=8)
    for j in range(4):
        other = Odd().double()
        assign(other, thetas[j])
        with torch.no_grad():
            ref = float(torch.nn.functional.cross_entropy(other(x), y))
        assert float(losses[j]) == pytest.approx(ref, rel=1e-12)
    with torch.no_grad():
        direct = float(torch.nn.functional.cross_entropy(model(x), y))
    assert evaluate(model, x, y)[0] == pytest.approx(direct, rel=1e-12)


def _model(arch: str, bn: bool):
    from landscape.models import CNN

    torch.manual_seed(3)
    if arch == "cnn":
        return CNN([3, 4], [12], "relu", 10, bn)
    if arch == "cnn-skip":
        return CNN([3, 4], [12, 12, 8], "relu", 10, bn, skip=True)
    if arch == "mlp-skip":  # an identity and a projected residual block
        return MLP(784, [16, 16, 12], "relu", 10, bn, skip=True)
    return MLP(784, [16, 12], "tanh", 10, bn)


@pytest.mark.parametrize(("arch", "bn"), [("mlp", False), ("mlp", True), ("cnn", False), ("cnn", True),
                                          ("mlp-skip", False), ("mlp-skip", True), ("cnn-skip", True)])
def test_factorized_planes_lines_and_curves_equal_direct_evaluation(arch, bn):
    """The first layer's shared products reassociate sums only: every point of a plane, a line and a Bézier
    curve equals the network evaluated on its own (batch-norm statistics recomputed per point by
    recompute_batch_norm, one network at a time) to float32 rounding (1e-5 relative)."""
    from landscape.paths.curves import bezier_points
    from landscape.paths.line import line_points
    from landscape.paths.points import _one_at_a_time, evaluate_points
    from landscape.paths.surface import plane_points

    model = _model(arch, bn)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(150, 784, generator=g)
    y = torch.randint(0, 10, (150,), generator=g)
    xt, yt = torch.randn(40, 784, generator=g), torch.randint(0, 10, (40,), generator=g)
    theta = flatten(model)
    d1, d2 = (0.05 * torch.randn(theta.numel(), generator=g) for _ in range(2))
    families = [plane_points(theta, d1, d2, [-1.0, 0.0, 0.5, 1.0], [-1.0, 0.0, 1.0]),
                line_points(theta, theta + d1, [0.0, 0.25, 0.5, 1.0, 1.5]),
                bezier_points(theta, theta + d2, theta + d1, [0.0, 0.3, 0.6, 1.0])]
    splits = {"train": (x, y), "test": (xt, yt)}
    for points in families:
        got, route = evaluate_points(model, points, splits, batch_size=64, bn_data=x if bn else None)
        assert route == "factorized"
        direct, _ = evaluate_points(model, points, splits, batch_size=64, bn_data=x if bn else None, factorize=False)
        if bn:
            reference = _one_at_a_time(model, points.thetas(), splits, 64, "cross_entropy", x)
        else:
            reference = {name: tuple(torch.tensor(v, dtype=torch.float64) for v in zip(
                *[evaluate(model, *split, theta=t) for t in points.thetas()], strict=True))
                for name, split in splits.items()}
        for name in splits:
            torch.testing.assert_close(got[name][0], reference[name][0], rtol=1e-5, atol=0)
            torch.testing.assert_close(direct[name][0], reference[name][0], rtol=1e-5, atol=0)
            assert (got[name][1] - reference[name][1]).abs().max() <= 1 / len(splits[name][1])  # a tie at most
    assert torch.equal(flatten(model), theta)  # the model is untouched


def test_the_sharpness_pairs_share_the_first_layer_and_match_one_at_a_time():
    from landscape.evaluation import losses_function
    from landscape.stacked import AffinePoints

    model = _model("mlp", False)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(90, 784, generator=g), torch.randint(0, 10, (90,), generator=g)
    theta = flatten(model)
    d = 0.02 * torch.randn(3, theta.numel(), generator=g)
    eye = torch.eye(3)
    pairs = AffinePoints(theta, d, torch.cat([torch.zeros(1, 3), eye, -eye]))
    got = losses_function(model, x, y, 32)(pairs)
    one = torch.tensor([evaluate(model, x, y, theta=t)[0] for t in torch.cat([theta[None], theta + d, theta - d])],
                       dtype=torch.float64)
    torch.testing.assert_close(got, one, rtol=1e-5, atol=0)
