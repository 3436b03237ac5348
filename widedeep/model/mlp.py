"""The deep tower's multilayer perceptron.

Kept separate from the Wide & Deep assembly because serving slices its first layer (the
user/context columns are multiplied once per request, the item columns per candidate):
``first_linear`` is the layer it splits, and the rest is a plain ``nn.Sequential``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """``in_dim -> hidden[0] -> ... -> hidden[-1] -> out_dim`` with an activation (and
    optional dropout) after every hidden layer; the output layer is linear (a logit)."""

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int = 1,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        dims = [in_dim, *hidden]
        layers: list[nn.Module] = []
        for i in range(len(hidden)):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(dims[-1], out_dim))
        self.layers = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim

    @property
    def first_linear(self) -> nn.Linear:
        """The input layer (serving splits its weight columns by feature side)."""
        return self.layers[0]  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
