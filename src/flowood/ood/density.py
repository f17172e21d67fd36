"""Any density model as the model of OOD scores, the detector and evaluation: a small protocol.

flowood's scores need one thing from a model: the log-likelihood of a batch. A flowood flow
(:class:`~flowood.flows.FlowModel`) provides it for 8-bit images and vectors alike. Any other model is
accepted when it follows this protocol:

* it is a ``torch.nn.Module`` with ``log_prob(x) -> Tensor[B]`` (nflows' ``Flow``, normflows'
  ``NormalizingFlow``, your own module), or a zuko flow (called with no context, it gives a distribution with
  ``log_prob``);
* ``x`` is a float32 batch ``[B, *input_shape]`` on the model's device: vectors as they are; images as floats
  ``k / 255`` in [0, 1] (flowood converts uint8 images before the call; dequantization, if the model wants it,
  is the model's own business);
* the result is the log-density in nats, one number per sample.

Scores that need more than the likelihood say so when given such a model: the per-scale latent scores need a
multi-scale flowood flow, and the likelihood ratio needs a ``background`` model (flowood can only train a
background copy of its own flows).

What a model offers beyond ``log_prob`` it declares with capability flags, boolean class attributes read by
:func:`capabilities` (see :class:`Capabilities`): ``flowood_api`` (flowood's whole scoring API: used as it is),
``traceable`` (a flowood flow in PyTorch, with layers to trace, export and save), ``exported`` (a flow exported
to an inference engine), ``rebuildable`` (its ``config`` rebuilds the architecture) and ``scale_latents`` (the
prior's log-density per scale). flowood asks these flags, never a model's class: a model that declares none is
scored by its log-likelihood alone, through :class:`DensityModel`.

Example:
    >>> from torch import nn
    >>> class Gaussian(nn.Module):
    ...     def log_prob(self, x):
    ...         return -0.5 * (x ** 2).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)
    >>> density = as_density(Gaussian(), input_shape=(3,))
    >>> density.bits_per_dim(torch.zeros(2, 3)).shape
    torch.Size([2])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from flowood.errors import InputError
from flowood.flows import FlowModel
from flowood.flows.capabilities import Capabilities, capabilities
from flowood.options import ConfigError

__all__ = ["Capabilities", "Density", "DensityModel", "as_density", "capabilities"]


@runtime_checkable
class Density(Protocol):
    """What flowood needs from a model: ``log_prob(x)``, nats per sample (see the module docstring).

    A model may also declare capability flags, boolean class attributes named as the fields of
    :class:`Capabilities` (all False when absent), to say what more it offers; :func:`capabilities` reads them.
    """

    def log_prob(self, x: Tensor) -> Tensor: ...


class DensityModel(nn.Module):
    """A model that follows the density protocol, with the few things flowood's scores ask of every model
    (``bits_per_dim``, ``num_dims``, ``input_shape``, ``check_input``), so it is scored like a flowood flow.

    Args:
        model: the density: a module with ``log_prob``, or a zuko flow.
        input_shape: one sample's shape; None: learned from the first batch scored.
    """

    discrete = False  # it models continuous inputs; flowood does not dequantize for it
    num_scales = 1
    flowood_api = True  # the wrapper speaks flowood's scoring API; the model it wraps declares nothing more

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.model = model
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self._log_prob = _log_prob_of(model)
        self.config: dict[str, Any] = {"flow": type(model).__name__, "external": True}

    @property
    def num_dims(self) -> int:
        if self.input_shape is None:
            raise ConfigError("the density's input shape is not known yet; pass `input_shape`")
        return math.prod(self.input_shape)

    def check_input(self, x: Tensor, image_range: Any = None) -> None:
        """Learn the input shape from the first batch, then refuse batches of another shape."""
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor batch, got {type(x).__name__}")
        if self.input_shape is None:
            self.input_shape = tuple(x.shape[1:])
        if tuple(x.shape[1:]) != self.input_shape:
            raise InputError(f"this model takes inputs of shape {self.input_shape} per sample, got batch of shape "
                             f"{tuple(x.shape)}")

    def _float(self, x: Tensor) -> Tensor:
        device = next((p.device for p in self.model.parameters()), x.device)
        x = x.to(device)
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    def log_prob(self, x: Tensor, **_: Any) -> Tensor:
        """Log-density in nats per sample of ``x`` (uint8 images are passed as ``k / 255``)."""
        return self._log_prob(self._float(x)).reshape(-1)

    def bits_per_dim(self, x: Tensor, **_: Any) -> Tensor:
        """``-log_prob / (D ln 2)``: the density's negative log-likelihood per dimension, in bits."""
        if self.input_shape is None:
            self.check_input(x)
        return -self.log_prob(x) / (self.num_dims * math.log(2.0))


def _log_prob_of(model: Any) -> Callable[[Tensor], Tensor]:
    if callable(getattr(model, "log_prob", None)):
        return model.log_prob
    if callable(model):  # zuko: a lazy distribution, called (without context) for the distribution
        try:
            distribution = model()
        except TypeError:
            distribution = None
        if callable(getattr(distribution, "log_prob", None)):
            return lambda x: model().log_prob(x)
    raise ConfigError(f"{type(model).__name__} is not a density: it has no log_prob(x) (flowood takes flowood "
                      "flows, torch modules with log_prob(x) -> [B] nats, and zuko flows)")


def as_density(model: Any, input_shape: tuple[int, ...] | None = None) -> FlowModel | DensityModel:
    """A model that speaks flowood's scoring API (capability ``flowood_api``: flowood's flows, exported or not) as it
    is; any other density wrapped in :class:`DensityModel`.

    Raises:
        ConfigError: ``model`` has no ``log_prob`` (and is no zuko flow).
    """
    if capabilities(model).flowood_api:
        return model
    return DensityModel(model, input_shape)
