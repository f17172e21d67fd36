"""The contract every invertible layer follows, and the record a layer leaves when traced.

A layer maps ``x -> (y, log_det)`` where ``log_det`` holds ``log |det dy/dx|`` per sample
(shape ``[B]``), and ``inverse(y)`` gives ``x`` back. Layers that change the tensor's shape
(squeeze) follow the same contract; factoring out latents is done by the model, not by layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["FlowLayer", "LayerRecord"]


@dataclass
class LayerRecord:
    """What one layer did to a batch, kept for inspection.

    Attributes:
        name: position of the layer in the model, e.g. ``"scale0.coupling2"``.
        kind: the layer's kind, e.g. ``"coupling"``, ``"actnorm"``, ``"squeeze"``, ``"split"``.
        output: the layer's output (for ``"split"``: the latents it factored out).
        log_det: per-sample log-determinant of this layer, shape ``[B]``.
        extras: layer-specific tensors, e.g. a coupling's ``input``, ``s``, ``t`` and masks.
    """

    name: str
    kind: str
    output: Tensor
    log_det: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


class FlowLayer(nn.Module):
    """An invertible layer with a tractable log-determinant.

    Subclasses implement :meth:`forward` and :meth:`inverse`; :meth:`trace_forward` returns
    extra tensors worth looking at (a coupling layer's scale and shift, say).
    """

    kind: str = "layer"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def trace_forward(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Like :meth:`forward`, and also returns a dict of tensors for inspection."""
        y, log_det = self.forward(x)
        return y, log_det, {}


def per_sample_sum(t: Tensor) -> Tensor:
    """Sum over every dimension but the first (the batch)."""
    return t.reshape(t.shape[0], -1).sum(dim=1)


def zeros_log_det(x: Tensor) -> Tensor:
    """A zero log-determinant of the right batch size, dtype and device."""
    return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
