"""The optimizers ``flowood train`` offers, built in one place.

PyTorch's fused Adam makes the optimizer step of a Glow or RealNVP (a few hundred small parameter tensors)
2.3x-4.9x faster on a 2-core CPU (the multi-tensor one 1.6x), but on the demo's RealNVP the fused Adam trained
to worse test bits/dim than the one-tensor-at-a-time Adam in each of four seeds (after 150 steps: 0.02-0.14
bits/dim worse; the multi-tensor Adam, tried on one seed, matched the fused one), so flowood keeps PyTorch's
default implementation.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from flowood.options import ConfigError
from flowood.training.config import OPTIMIZERS

__all__ = ["make_optimizer"]


def make_optimizer(params: Iterable[torch.Tensor], name: str = "Adam", lr: float = 1e-3,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The optimizer ``name`` (one of :data:`~flowood.training.OPTIMIZERS`; SGD with momentum 0.9) over ``params``."""
    params = list(params)
    if not params:
        raise ConfigError("the model has no trainable parameters")
    if name in ("Adam", "AdamW", "RMSprop"):
        return getattr(torch.optim, name)(params, lr=lr, weight_decay=weight_decay)
    if name == "SGD":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=0.9)
    raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
