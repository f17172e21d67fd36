"""What flowood can do with a density model beyond ``log_prob``, as the model declares it.

A density tells flowood what else it offers through boolean class attributes of the names below (the capability
flags of the density protocol, :mod:`flowood.ood.density`); a model that declares none has none. Code that needs
more than the log-likelihood asks :func:`capabilities` instead of testing which class a model is, so a model of
another class that offers the same declares the same flags and is treated alike.

Example:
    >>> from flowood.flows import RealNVP
    >>> found = capabilities(RealNVP((1, 4, 4), num_blocks=1, num_mid_channels=4))
    >>> found.traceable, found.exported, found.scale_latents
    (True, False, True)
    >>> capabilities(torch.nn.Linear(2, 2)).flowood_api  # no flags declared: none
    False
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Capabilities", "capabilities"]


@dataclass(frozen=True)
class Capabilities:
    """The capability flags of a density (each the value of the class attribute of the same name, False if absent).

    Attributes:
        flowood_api: it offers flowood's whole scoring API, so it is used as it is (never wrapped):
            ``log_prob(x, noise=, generator=, validate=)`` and ``bits_per_dim`` of data as users have it (for image
            models 8-bit images, which it dequantizes), ``check_input(x)``, ``input_shape``, ``num_dims``,
            ``num_scales``, ``discrete`` and ``config``.
        traceable: a flowood flow in PyTorch whose layers flowood can reach: ``trace`` and the inspection, ``sample``,
            ``optimize`` and ``mixed_precision``, export to an engine, and saving as its ``config`` and
            ``state_dict`` (rebuilt with :func:`~flowood.flows.build_flow`).
        exported: a flow exported to an inference engine (its ``backend`` names which): it scores like a flowood
            flow, but has no layers to trace, train or save.
        rebuildable: its ``config`` rebuilds an untrained PyTorch flow of the same architecture with
            :func:`~flowood.flows.build_flow` (how the likelihood ratio trains its background model).
        scale_latents: it gives the prior's log-density of each scale's latents, ``log_prior_by_scale(x, noise=,
            generator=) -> [B, scales]``, and their dimensions, ``scale_dims`` (the per-scale latent scores).
    """

    flowood_api: bool = False
    traceable: bool = False
    exported: bool = False
    rebuildable: bool = False
    scale_latents: bool = False


def capabilities(model: Any) -> Capabilities:
    """The capability flags ``model`` declares (only ``True`` counts; anything else, or no attribute, is False)."""
    return Capabilities(**{f.name: getattr(model, f.name, False) is True for f in fields(Capabilities)})
