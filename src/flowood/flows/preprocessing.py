"""From 8-bit images to the continuous inputs a flow models, with every Jacobian counted.

Two steps, as in RealNVP (Dinh et al. 2017) and the paper's code:

1. Uniform dequantization: an 8-bit value ``k`` becomes ``(k + u) / 256`` with ``u ~ U[0, 1)``.
   A density ``p`` on the continuous cube gives the 8-bit image the probability
   ``P(k) >= E_u p((k + u) / 256) / 256**D``; :data:`DEQUANTIZATION_LOG_DET` per dimension is that
   ``1 / 256`` factor, so log-likelihoods are in nats of the 8-bit image and bits/dim match the
   literature.
2. The logit transform ``y = logit(alpha + (1 - 2 alpha) x)`` (``alpha = 0.05`` in RealNVP), a
   bijection from (0, 1) to the real line whose log-determinant is counted.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowood.flows.base import FlowLayer, per_sample_sum
from flowood.options import ConfigError

__all__ = ["LogitTransform", "dequantize", "quantize", "to_unit_interval", "DEQUANTIZATION_LOG_DET"]

NUM_BINS = 256
#: log-density correction per dimension from the continuous cube to 8-bit probabilities.
DEQUANTIZATION_LOG_DET = -math.log(NUM_BINS)


def to_unit_interval(x: Tensor) -> Tensor:
    """Images as float in [0, 1]: uint8 ``k`` becomes ``k / 255``; floats pass through."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return x


def dequantize(x: Tensor, noise: str = "uniform", generator: torch.Generator | None = None) -> Tensor:
    """Map 8-bit images to points of the continuous unit cube.

    Args:
        x: images as uint8 or as floats ``k / 255`` in [0, 1], any shape.
        noise: ``"uniform"`` adds ``u ~ U[0, 1)`` (training and the usual evaluation);
            ``"center"`` uses ``u = 0.5`` (deterministic, for pictures).
        generator: optional random generator for reproducible noise.

    Returns:
        ``(k + u) / 256`` as float, same shape as ``x``.
    """
    k = torch.round(to_unit_interval(x) * (NUM_BINS - 1))
    if noise == "uniform":
        device = generator.device if generator is not None else k.device
        u = torch.rand(k.shape, generator=generator, dtype=k.dtype, device=device).to(k.device)
    elif noise == "center":
        u = torch.full_like(k, 0.5)
    else:
        raise ConfigError(f"unknown dequantization noise {noise!r}; use 'uniform' or 'center'")
    return (k + u) / NUM_BINS


def quantize(x: Tensor) -> Tensor:
    """Inverse of :func:`dequantize`: continuous values in [0, 1] back to ``k / 255``."""
    k = torch.clamp(torch.floor(x * NUM_BINS), 0, NUM_BINS - 1)
    return k / (NUM_BINS - 1)


class LogitTransform(FlowLayer):
    """``y = logit(alpha + (1 - 2 alpha) x)`` for x in (0, 1), RealNVP's preprocessing.

    Args:
        alpha: how far from 0 and 1 the squashed input stays (0.05 in RealNVP: "constraint 0.9").

    References:
        Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017.

    Example:
        >>> layer = LogitTransform(alpha=0.05)
        >>> x = torch.rand(2, 1, 4, 4)
        >>> y, log_det = layer(x)
        >>> torch.allclose(layer.inverse(y), x, atol=1e-5)
        True
    """

    kind = "logit"

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0.0 <= alpha < 0.5:
            raise ConfigError(f"logit alpha must be in [0, 0.5), got {alpha}")
        self.alpha = float(alpha)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = self.alpha + (1.0 - 2.0 * self.alpha) * x
        log_s, log_rest = torch.log(s), torch.log1p(-s)  # each once: log1p is slow on the CPU
        y = log_s - log_rest
        log_det = per_sample_sum(-(log_s + log_rest)) + x[0].numel() * math.log(1.0 - 2.0 * self.alpha)
        return y, log_det

    def inverse(self, y: Tensor) -> Tensor:
        return (torch.sigmoid(y) - self.alpha) / (1.0 - 2.0 * self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
