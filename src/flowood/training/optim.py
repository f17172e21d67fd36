"""The optimizers ``flowood train`` offers, built in one place.

PyTorch's fused Adam makes the optimizer step of a Glow or RealNVP (a few hundred small parameter tensors)
2.3x-4.9x faster on a 2-core CPU (the multi-tensor one 1.6x), but on the demo's RealNVP the fused Adam trained
to worse test bits/dim than the one-tensor-at-a-time Adam in each of four seeds (after 150 steps: 0.02-0.14
bits/dim worse; the multi-tensor Adam, tried on one seed, matched the fused one), so flowood keeps PyTorch's
default implementation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from flowood.options import ConfigError
from flowood.training.config import OPTIMIZERS

__all__ = ["make_optimizer", "weight_decay_groups"]


def weight_decay_groups(flow: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups with the original code's weight decay.

    The original decays only the weight-normalisation scales (parameters named ``*weight_g``) of a RealNVP (its
    ResNet st-networks' convolutions and the rescales), and every parameter of Glow and the tabular RealNVP. flowood
    does the same: RealNVP flows with weight-normalised st-networks get a decayed group of their ``weight_g``
    parameters and an undecayed one of the rest; every other flow gets one group.
    """
    config = getattr(flow, "config", {}) or {}
    params = [(n, p) for n, p in flow.named_parameters() if p.requires_grad]
    if config.get("flow") != "RealNVP" or not config.get("weight_norm", False):
        return [{"params": [p for _, p in params]}]
    scales = [p for n, p in params if n.endswith("weight_g")]
    rest = [p for n, p in params if not n.endswith("weight_g")]
    return [{"params": scales, "weight_decay": weight_decay, "name": "weight_norm_scales"},
            {"params": rest, "weight_decay": 0.0, "name": "other"}]


def make_optimizer(params: Iterable[torch.Tensor] | list[dict[str, Any]], name: str = "Adam", lr: float = 1e-3,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The optimizer ``name`` (one of :data:`~flowood.training.OPTIMIZERS`; SGD with momentum 0.9) over ``params``
    (tensors, or parameter groups whose own ``weight_decay`` overrides the default)."""
    params = [g for g in params if not isinstance(g, dict) or g["params"]]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    if name in ("Adam", "AdamW", "RMSprop"):
        return getattr(torch.optim, name)(params, lr=lr, weight_decay=weight_decay)
    if name == "SGD":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=0.9)
    raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
