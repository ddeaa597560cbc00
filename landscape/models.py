"""The model family, each a params edit: an MLP and a LeNet-style CNN, with or without batch norm and residual
connections, at any depth and width.

* ``mlp``: ``input_dim → hidden[0] → … → hidden[-1] → num_classes``, activation between linear layers;
  with ``batch_norm`` each hidden linear layer is followed by ``BatchNorm1d`` before the activation.
* ``cnn`` (for 28×28 inputs): two blocks conv 5×5 (padding 2, then none) → [BatchNorm2d] → activation →
  2×2 max-pool, with ``channels`` = (c₁, c₂) filters (LeNet-5: 6, 16), giving c₂·5·5 features; then the MLP
  part ``hidden`` → ``num_classes`` as above.
* ``skip`` (both archs, the dense part): every hidden block after the first becomes residual,
  h_i = P_i h_{i−1} + f_i(h_{i−1}) with f_i = act(BN(W_i h + b_i)) the block's own layer, P_i the identity where
  the widths agree and a learned linear projection without bias where they differ (ResNet's option B, He et
  al. 2016). With one hidden layer there is no block to skip around: the network is the plain MLP (allowed, so
  that a depth × skip grid may include depth 1).

Initialization (``init``): ``torch`` — PyTorch's default for each layer (Kaiming-uniform, a = √5: weights of
variance 1/(3 fan_in)) — or ``he`` — Kaiming-normal for ReLU (variance 2/fan_in) on every weight matrix, biases
zero, batch-norm scales 1: the initialization that keeps a deep plain ReLU net's activations from vanishing. It
is the same for skip and no-skip, so the two differ only in the connections.

"The network at θ" has one definition everywhere (:func:`network_at`): with batch norm, its statistics are
recomputed on the training split at θ — the convention of the path literature, where interpolated weights have
no stored statistics of their own — and then held fixed (eval mode), so the loss is one fixed function of the
parameters and its Hessian is well defined. The probe, the line, the surface and the connectivity stage all
use it, so a surface's centre, a line's endpoint and the probe report the same loss at one checkpoint; the
statistics stored in the checkpoint (running averages from training) are evaluated beside it by the probe.
See docs/theory.md §11.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
}
ARCHS = ("mlp", "cnn")


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation = {name!r}; allowed: {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def _block(width: int, h: int, activation: str, batch_norm: bool) -> list[nn.Module]:
    return [nn.Linear(width, h), *([nn.BatchNorm1d(h)] if batch_norm else []), _activation(activation)]


def _dense(width: int, hidden: list[int], activation: str, num_classes: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += _block(width, h, activation, batch_norm)
        width = h
    layers.append(nn.Linear(width, num_classes))
    return layers


class Residual(nn.Module):
    """h ↦ shortcut(h) + body(h): body = act(BN(Wh + b)); shortcut = identity, or a linear projection without
    bias where the widths differ."""

    def __init__(self, width: int, h: int, activation: str, batch_norm: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(*_block(width, h, activation, batch_norm))
        self.shortcut = nn.Identity() if width == h else nn.Linear(width, h, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.shortcut(h) + self.body(h)


class ResidualDense(nn.Module):
    """The dense part with residual blocks: stem (the first hidden layer), blocks (the others), head."""

    def __init__(self, width: int, hidden: list[int], activation: str, num_classes: int, batch_norm: bool) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_block(width, hidden[0], activation, batch_norm))
        self.blocks = nn.ModuleList(Residual(a, b, activation, batch_norm) for a, b in itertools.pairwise(hidden))
        self.head = nn.Linear(hidden[-1], num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.stem(h)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def _dense_part(width: int, hidden: list[int], activation: str, num_classes: int, batch_norm: bool,
                skip: bool) -> nn.Module:
    if skip and len(hidden) > 1:
        return ResidualDense(width, hidden, activation, num_classes, batch_norm)
    return nn.Sequential(*_dense(width, hidden, activation, num_classes, batch_norm))


INITS = ("torch", "he")


def initialize(model: nn.Module, init: str) -> nn.Module:
    """``he``: Kaiming-normal (ReLU gain, fan_in) weights, zero biases, unit batch-norm scales; ``torch``: as built."""
    if init == "torch":
        return model
    if init != "he":
        raise ValueError(f"init = {init!r}; allowed: {', '.join(INITS)}")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    m.bias.zero_()
    return model


class MLP(nn.Module):
    """Fully connected network; ``spec`` rebuilds it (as stored in checkpoints)."""

    def __init__(self, input_dim: int, hidden: list[int], activation: str, num_classes: int,
                 batch_norm: bool = False, skip: bool = False, init: str = "torch") -> None:
        super().__init__()
        self.net = _dense_part(input_dim, hidden, activation, num_classes, batch_norm, skip)
        self.spec = {"arch": "mlp", "input_dim": input_dim, "hidden": list(hidden), "activation": activation,
                     "num_classes": num_classes, "batch_norm": batch_norm, "skip": skip, "init": init,
                     "skip_blocks": len(hidden) - 1 if skip else 0}
        initialize(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class CNN(nn.Module):
    """LeNet-style network for 1×28×28 inputs (flattened 784-vectors are reshaped)."""

    def __init__(self, channels: list[int], hidden: list[int], activation: str, num_classes: int,
                 batch_norm: bool = False, skip: bool = False, init: str = "torch") -> None:
        super().__init__()
        c1, c2 = channels
        blocks: list[nn.Module] = []
        for cin, cout, pad in ((1, c1, 2), (c1, c2, 0)):
            blocks.append(nn.Conv2d(cin, cout, 5, padding=pad))
            if batch_norm:
                blocks.append(nn.BatchNorm2d(cout))
            blocks += [_activation(activation), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks)
        self.net = _dense_part(c2 * 5 * 5, hidden, activation, num_classes, batch_norm, skip)
        self.spec = {"arch": "cnn", "channels": list(channels), "hidden": list(hidden), "activation": activation,
                     "num_classes": num_classes, "batch_norm": batch_norm, "skip": skip, "init": init,
                     "skip_blocks": len(hidden) - 1 if skip else 0}
        initialize(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.features(x.reshape(len(x), 1, 28, 28)).flatten(1))


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build a model from its spec dict (as stored in checkpoints; checkpoints before ``batch_norm`` existed
    hold plain MLPs)."""
    arch = spec.get("arch")
    extra = {"skip": spec.get("skip", False), "init": spec.get("init", "torch")}
    if arch == "mlp":
        return MLP(spec["input_dim"], spec["hidden"], spec["activation"], spec["num_classes"],
                   spec.get("batch_norm", False), **extra)
    if arch == "cnn":
        return CNN(spec["channels"], spec["hidden"], spec["activation"], spec["num_classes"], spec["batch_norm"],
                   **extra)
    raise ValueError(f"model arch = {arch!r}; allowed: {', '.join(ARCHS)}")


def make_model(cfg: Any, input_dim: int, num_classes: int) -> nn.Module:
    """The model a ``model`` params group describes (arch, hidden or depth × width, activation, channels,
    batch_norm, skip, init)."""
    from landscape.config import hidden_widths

    hidden = hidden_widths(cfg)
    if cfg.arch == "cnn":
        return CNN(cfg.channels, hidden, cfg.activation, num_classes, cfg.batch_norm, cfg.skip, cfg.init)
    return MLP(input_dim, hidden, cfg.activation, num_classes, cfg.batch_norm, cfg.skip, cfg.init)


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def network_at(model: nn.Module, train_x: torch.Tensor, batch_size: int = 4096) -> nn.Module:
    """``model`` as "the network at θ": eval mode, batch-norm statistics (if any) recomputed on ``train_x``
    (in place; returns the model)."""
    if has_batch_norm(model):
        recompute_batch_norm(model, train_x, batch_size)
    model.eval()
    return model


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> None:
    """Set every batch-norm layer's running statistics to the exact mean and unbiased variance of its input
    over all of ``x``, with the model in eval mode, layer by layer in order (a later layer's input depends on
    the earlier layers' new statistics); leaves the model in eval mode. Needed at any point of a path or
    plane: the statistics stored with an endpoint do not belong to the interpolated weights (Garipov et al.
    2018; Frankle et al. 2020). Costs one pass over ``x`` per batch-norm layer."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    for bn in bns:
        sums: list[torch.Tensor] = []

        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], sums: list = sums) -> None:
            z = inputs[0].double()
            dims = [d for d in range(z.dim()) if d != 1]  # all but the channel dimension
            count = z.numel() // z.shape[1]
            sums.append(torch.stack([z.sum(dims), (z * z).sum(dims), torch.full_like(z.sum(dims), count)]))

        handle = bn.register_forward_pre_hook(hook)
        try:
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size])
        finally:
            handle.remove()
        s1, s2, n = torch.stack(sums).sum(0)
        mean = s1 / n
        var = (s2 - n * mean * mean) / (n - 1).clamp(min=1)
        bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
        bn.running_var.copy_(var.clamp(min=0).to(bn.running_var.dtype))
