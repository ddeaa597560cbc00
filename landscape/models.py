"""The model family: an MLP given by its hidden widths and activation (room for a CNN later)."""

from __future__ import annotations

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


class MLP(nn.Module):
    """``input_dim → hidden[0] → … → hidden[-1] → num_classes``, activation between linear layers.

    Initialization is PyTorch's default for ``nn.Linear`` (Kaiming-uniform, a = √5).
    """

    def __init__(self, input_dim: int, hidden: list[int], activation: str, num_classes: int) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation = {activation!r}; allowed: {', '.join(_ACTIVATIONS)}")
        layers: list[nn.Module] = []
        width = input_dim
        for h in hidden:
            layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.spec = {
            "arch": "mlp",
            "input_dim": input_dim,
            "hidden": list(hidden),
            "activation": activation,
            "num_classes": num_classes,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build a model from its spec dict (as stored in checkpoints)."""
    if spec.get("arch") != "mlp":
        raise ValueError(f"model arch = {spec.get('arch')!r}; allowed: 'mlp'")
    return MLP(spec["input_dim"], spec["hidden"], spec["activation"], spec["num_classes"])


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
