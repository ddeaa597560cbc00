"""Exact losses and accuracies over a data set, at one or many parameter vectors.

L_S(θ) = (1/|S|) Σ_{i∈S} ℓ(f(x_i; θ), y_i), model in eval mode, with ℓ the training loss:

* ``cross_entropy``: ℓ = −log softmax(z)_y (natural log, nats);
* ``mse``: ℓ = ½ Σ_c (z_c − [y = c])², the squared error on one-hot targets (Cohen et al. 2021), summed over
  the classes and halved, so that its Hessian with respect to the outputs is the identity.

Per-example losses are summed in float64 so that differences of L_S at nearby θ (the sharpness estimates) are
not lost to float32 rounding. :func:`evaluate_many` evaluates many parameter vectors (surface grid points,
sharpness directions, path points) in one pass over the data: one shared facility. For the package's plain
MLP it stacks the weight matrices (the first layer of all sets is one matrix product); other models go through
``torch.func.vmap`` over ``functional_call``. (Skipping input features that are constant over a batch, as the
R-operator does, did not pay here: finding them and copying the other columns cost more than the saved
products, 0.364 s against 0.341 s for the 60,000 training examples.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from landscape.parameters import flatten, unflatten

LOSSES = ("cross_entropy", "mse")

# ℓ summed over a batch: (outputs, targets) -> scalar. Curvature code accepts any such function.
SumLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def per_example_loss(outputs: torch.Tensor, targets: torch.Tensor, kind: str = "cross_entropy") -> torch.Tensor:
    """ℓ of each row of ``outputs`` (…, C) against integer ``targets`` (…)."""
    if kind == "cross_entropy":
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1),
                               reduction="none").view(targets.shape)
    if kind == "mse":
        onehot = F.one_hot(targets, outputs.shape[-1]).to(outputs.dtype)
        return 0.5 * (outputs - onehot).pow(2).sum(-1)
    raise ValueError(f"loss = {kind!r}; allowed: {', '.join(LOSSES)}")


def batch_loss(outputs: torch.Tensor, targets: torch.Tensor, kind: str = "cross_entropy") -> torch.Tensor:
    """The mean loss of a mini-batch, as training minimizes it."""
    if kind == "cross_entropy":
        return F.cross_entropy(outputs, targets)
    return per_example_loss(outputs, targets, kind).mean()


def sum_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="sum")


def sum_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return per_example_loss(outputs, targets, "mse").sum()


SUM_LOSSES: dict[str, SumLoss] = {"cross_entropy": sum_cross_entropy, "mse": sum_mse}


def sum_loss(kind: str) -> SumLoss:
    """The summed loss of a kind (``cross_entropy`` | ``mse``), as the curvature code takes it."""
    if kind not in SUM_LOSSES:
        raise ValueError(f"loss = {kind!r}; allowed: {', '.join(LOSSES)}")
    return SUM_LOSSES[kind]


def _plain_mlp(model: nn.Module) -> list[nn.Module] | None:
    """The layers of the package's plain MLP (Linear / activation only), else None."""
    from landscape.models import MLP

    if not isinstance(model, MLP):
        return None
    layers = list(model.net)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in layers):
        return None
    return layers


def _mlp_outputs(layers: list[nn.Module], thetas: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """Outputs (m, B, C) of the MLP at each row of ``thetas`` (m, n) on the batch ``xb`` (B, d)."""
    m = thetas.shape[0]
    lins = [layer for layer in layers if isinstance(layer, nn.Linear)]
    acts = [layer for layer in layers if not isinstance(layer, nn.Linear)]
    offset, weights = 0, []
    for lin in lins:
        out_f, in_f = lin.weight.shape
        w = thetas[:, offset : offset + out_f * in_f].view(m, out_f, in_f)
        offset += out_f * in_f
        b = thetas[:, offset : offset + out_f]
        offset += out_f
        weights.append((w, b))
    x = xb.flatten(1).to(thetas.dtype)
    w1, bias = weights[0]
    h1 = w1.shape[1]
    if m == 1:  # plain matrix products (a batch of one set would cost more through bmm)
        a = torch.addmm(bias[0], x, w1[0].t())
        for k, (w, b) in enumerate(weights[1:]):
            a = torch.addmm(b[0], acts[k](a), w[0].t())
        return a.unsqueeze(0)
    a = (torch.mm(x, w1.reshape(m * h1, -1).t()).view(len(x), m, h1) + bias).transpose(0, 1)  # (m, B, h1)
    for k, (w, b) in enumerate(weights[1:]):
        a = torch.baddbmm(b.unsqueeze(1), acts[k](a), w.transpose(1, 2))
    return a


def evaluate_many(
    model: nn.Module,
    thetas: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 4096,
    loss: str = "cross_entropy",
    sets_per_pass: int = 8,
    max_elements: int = 2**24,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_S, accuracy)`` at each row of ``thetas`` (m, n): two float64 tensors of length m.

    The rows are evaluated ``sets_per_pass`` at a time (8 is the fastest per set on this machine's CPU for
    the default MLP: 17% less time per set than one at a time; 17 at once is slower again, out of cache).
    The model's own parameters and buffers are not modified; it is evaluated in eval mode. Rows of the data
    per pass are capped so that about ``max_elements`` activations are alive at once.
    """
    thetas = thetas.reshape(-1, thetas.shape[-1])
    if len(thetas) > sets_per_pass:
        parts = [evaluate_many(model, thetas[i : i + sets_per_pass], x, y, batch_size, loss, sets_per_pass,
                               max_elements) for i in range(0, len(thetas), sets_per_pass)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    m = thetas.shape[0]
    was_training = model.training
    model.eval()
    totals = torch.zeros(m, dtype=torch.float64)
    correct = torch.zeros(m, dtype=torch.float64)
    layers = _plain_mlp(model)
    widest = max((p.shape[0] for p in model.parameters() if p.dim() >= 1), default=1)
    rows = max(1, min(batch_size, max_elements // max(1, m * widest)))
    try:
        with torch.no_grad():
            if layers is None:
                names = [n for n, _ in model.named_parameters()]
                stacked = {n: torch.stack([unflatten(t, model)[n] for t in thetas]) for n in names}

                def outputs_of(params: dict, xb: torch.Tensor) -> torch.Tensor:
                    return functional_call(model, params, (xb,))

                batched = torch.func.vmap(outputs_of, in_dims=(0, None))
            for i in range(0, len(x), rows):
                xb, yb = x[i : i + rows], y[i : i + rows]
                out = _mlp_outputs(layers, thetas, xb) if layers is not None else batched(stacked, xb)
                totals += per_example_loss(out, yb.expand(m, -1), loss).double().sum(1).cpu()
                correct += (out.argmax(-1) == yb).sum(1).double().cpu()
    finally:
        model.train(was_training)
    return totals / len(x), correct / len(x)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 4096,
    theta: torch.Tensor | None = None,
    loss: str = "cross_entropy",
) -> tuple[float, float]:
    """``(L_S, accuracy)`` over all of (x, y); at flat parameters ``theta`` if given (model untouched)."""
    theta = flatten(model) if theta is None else theta
    losses, accs = evaluate_many(model, theta[None], x, y, batch_size, loss)
    return float(losses[0]), float(accs[0])


def loss_function(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096,
                  loss: str = "cross_entropy") -> Callable[[torch.Tensor], float]:
    """θ ↦ L_S(θ) as a float64 Python float (the model's own parameters are not modified)."""

    def value(theta: torch.Tensor) -> float:
        return evaluate(model, x, y, batch_size, theta=theta, loss=loss)[0]

    return value


def losses_function(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096,
                    loss: str = "cross_entropy") -> Callable[[torch.Tensor], torch.Tensor]:
    """Θ (m, n) ↦ the m losses L_S(θ_j) in float64, in one pass over the data (:func:`evaluate_many`)."""

    def values(thetas: torch.Tensor) -> torch.Tensor:
        return evaluate_many(model, thetas, x, y, batch_size, loss)[0]

    return values


def loss_and_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096,
                      loss: str = "cross_entropy") -> Callable[[torch.Tensor], tuple[float, torch.Tensor]]:
    """θ ↦ (L_S(θ) in float64, ∇L_S(θ) flat), model in eval mode (its own parameters are not modified)."""

    def value_and_grad(theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        was_training = model.training
        model.eval()
        t = theta.detach().clone().requires_grad_(True)
        params = unflatten(t, model)
        total = torch.zeros((), dtype=torch.float64)
        try:
            for i in range(0, len(x), batch_size):
                out = functional_call(model, params, (x[i : i + batch_size],))
                per = per_example_loss(out, y[i : i + batch_size], loss)
                (per.sum() / len(x)).backward()
                total += per.detach().double().sum().cpu()
        finally:
            model.train(was_training)
        return float(total) / len(x), t.grad.detach()

    return value_and_grad
