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
