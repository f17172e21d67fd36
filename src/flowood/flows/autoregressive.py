"""Masked autoregressive flow (MAF) layers for vectors: a stronger tabular flow than coupling.

Each feature ``x_i`` is transformed with a shift and scale that depend on *all* earlier features
(not only on a fixed half, as in a coupling layer)::

    s_i, t_i = MADE(x)_i         (depend on x_1 .. x_{i-1} only)
    y_i = (x_i + t_i) * exp(s_i) log |det J| = sum_i s_i   (the Jacobian is triangular)

The form ``(x + t) * exp(s)`` with ``s = rescale * tanh(raw_s)`` is the coupling layer's, so ``-t``
is again the layer's prediction of a feature from the ones before it. The density direction is one
network pass; the inverse (sampling) needs one pass per feature.

References:
    Papamakarios, Pavlakou, Murray. Masked Autoregressive Flow for Density Estimation. NeurIPS 2017.
    Germain, Gregor, Murray, Larochelle. MADE: Masked Autoencoder for Distribution Estimation. ICML 2015.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowood.flows.base import FlowLayer, zeros_log_det
from flowood.flows.precision import run_st_net
from flowood.options import ConfigError

__all__ = ["MaskedLinear", "MADE", "MaskedAffineAutoregressive", "ReversePermutation"]


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask ``[out, in]``."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(torch.get_default_dtype()), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder: outputs ``[B, 2 * D]`` (raw scale, shift) where output ``i`` (and
    ``D + i``) depends only on inputs ``< i``.

    Hidden degrees are spread evenly over ``1 .. D - 1`` (so every feature conditions later ones even
    when the layers are narrower than D); a unit sees inputs and units of lower or equal degree, an
    output of degree ``i`` sees units of degree ``< i``.

    Args:
        dim: D, the number of features.
        hidden_units: width of each hidden layer.
        num_hidden_layers: hidden layers after the first (the tabular st-network's convention).
        init_zeros: zero-initialise the output layer, so the layer starts as the identity.
    """

    def __init__(self, dim: int, hidden_units: int = 256, num_hidden_layers: int = 1, init_zeros: bool = True) -> None:
        super().__init__()
        if dim < 2:
            raise ConfigError(f"MADE needs at least 2 features, got {dim}")
        self.dim = dim
        in_degrees = torch.arange(1, dim + 1)
        hidden_degrees = 1 + (torch.arange(hidden_units) * (dim - 1)) // hidden_units
        layers: list[nn.Module] = []
        previous = in_degrees
        for _ in range(num_hidden_layers + 1):
            mask = (hidden_degrees[:, None] >= previous[None, :])
            layers += [MaskedLinear(len(previous), hidden_units, mask), nn.ReLU(inplace=True)]
            previous = hidden_degrees
        out_degrees = in_degrees.repeat(2)
        out_mask = out_degrees[:, None] > previous[None, :]
        self.hidden = nn.Sequential(*layers)
        self.output = MaskedLinear(hidden_units, 2 * dim, out_mask)
        if init_zeros:
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.hidden(x))


class MaskedAffineAutoregressive(FlowLayer):
    """One MAF layer ``y_i = (x_i + t_i(x_<i)) * exp(s_i(x_<i))`` on vectors ``[B, D]``.

    Example:
        >>> layer = MaskedAffineAutoregressive(4, hidden_units=8, init_zeros=False)
        >>> x = torch.randn(3, 4)
        >>> y, log_det = layer(x)
        >>> torch.allclose(layer.inverse(y), x, atol=1e-5)
        True
    """

    kind = "autoregressive"
    #: the network that computes s and t: any function whose masks keep it autoregressive keeps the layer exact
    conditioner = "made"

    def __init__(self, dim: int, hidden_units: int = 256, num_hidden_layers: int = 1, init_zeros: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.made = MADE(dim, hidden_units, num_hidden_layers, init_zeros)
        self.rescale = nn.Parameter(torch.ones(dim))

    def _st(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raw_s, t = run_st_net(self.made, x).chunk(2, dim=1)
        return self.rescale * torch.tanh(raw_s), t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._st(x)
        return (x + t) * torch.exp(s), s.sum(dim=1)

    def inverse(self, y: Tensor) -> Tensor:
        # x_i needs x_<i only, so after pass i the first i features are final.
        x = torch.zeros_like(y)
        for i in range(self.dim):
            s, t = self._st(x)
            x = x.clone()
            x[:, i] = y[:, i] * torch.exp(-s[:, i]) - t[:, i]
        return x

    def trace_forward(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        s, t = self._st(x)
        return (x + t) * torch.exp(s), s.sum(dim=1), {"input": x, "s": s, "t": t}

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class ReversePermutation(FlowLayer):
    """Reverses the order of the features, so the next autoregressive layer conditions the other way."""

    kind = "permutation"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.flip(1), zeros_log_det(x)

    def inverse(self, y: Tensor) -> Tensor:
        return y.flip(1)
