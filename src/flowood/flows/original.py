"""Weights of the paper's original code in flowood's models.

The original code (Kirichenko et al. 2020, github.com/PolinaKirichenko/flows_ood) saves checkpoints as
``{"net": model.state_dict(), "epoch": ...}``, the state dict's names prefixed with ``module.`` when the model ran
under ``DataParallel``. Its models and flowood's paper-scale models are the same networks with other names, so a
state dict maps over layer by layer: the original's couplings, ActNorms and 1x1 convolutions appear in the same
order as flowood's, and inside each one the names agree once the original's ``.conv`` wrappers are dropped (the
tabular perceptron's layers agree by order).

Conventions that differ (the numbers do not depend on them, or differ by a constant):

* the original's log-likelihood of an image is flowood's ``log_prob`` plus ``D log(255/256)`` (its logit layer
  counts the Jacobian of ``k/255 -> k/256``); of a vector, flowood's minus ``D log 256``;
* the original's latent vector is flowood's latents per scale (:meth:`FlowModel.latents_by_scale`), each
  flattened, concatenated in order;
* the original dequantizes ``(255 x + u) / 256`` on every pass, as flowood's ``log_prob(noise="uniform")``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from flowood.errors import ModelError
from flowood.flows.coupling import AffineCoupling
from flowood.flows.layers import ActNorm, InvertibleConv1x1, Standardize
from flowood.flows.model import FlowModel

__all__ = ["load_original_state_dict", "original_loglik_offset", "original_state_dict"]

_WRAPPER = re.compile(r"\.conv(?=\.(weight_g|weight_v|weight|bias)$)")


def original_loglik_offset(flow: FlowModel) -> float:
    """What to add to ``flow.log_prob`` to get the original code's log-likelihood of the same input (nats):
    ``D log(255/256)`` for images, ``-D log 256`` for vectors (the conventions above). Thresholds taken from the
    original, such as negative training's ``negative_val``, are in its convention."""
    d = flow.num_dims
    return d * math.log(255 / 256) if flow.discrete else -d * math.log(256)


def original_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The model's state dict from an original checkpoint (``{"net": ...}``) or a state dict, without the
    ``module.`` prefix ``DataParallel`` adds."""
    state = checkpoint.get("net", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelError("expected the original code's checkpoint ({'net': state_dict, ...}) or a state dict of "
                         "tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _layer_kind(names: list[str]) -> str:
    if any(n.startswith(("st_net.", "rescale.")) for n in names):
        return "coupling"
    return "actnorm" if "logs" in names else "invconv"


def _original_layers(state: dict[str, Tensor]) -> list[tuple[str, str, dict[str, Tensor]]]:
    """``(prefix, kind, {name inside the layer: tensor})`` for each of the original's layers, in order."""
    layers: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        match = re.search(r"(^|\.)(st_net|rescale)\.", key)
        prefix = key[:match.start(2)] if match else key.rsplit(".", 1)[0] + "."
        layers.setdefault(prefix, {})[key[len(prefix):]] = value
    return [(prefix, _layer_kind(list(params)), params) for prefix, params in layers.items()]


def _flowood_layers(flow: FlowModel) -> list[tuple[str, str, nn.Module]]:
    kinds = ((AffineCoupling, "coupling"), (ActNorm, "actnorm"), (InvertibleConv1x1, "invconv"))
    out = []
    for name, step in zip(flow.step_names, flow.steps, strict=True):
        kind = next((k for cls, k in kinds if isinstance(step, cls)), None)
        if kind is not None:
            out.append((name, kind, step))
    return out


def _coupling_state(params: dict[str, Tensor], layer: nn.Module, where: str) -> dict[str, Tensor]:
    """The original coupling's tensors under flowood's names: by name without ``.conv`` wrappers, else (the
    tabular perceptron, whose layers the original numbers differently) by order."""
    target = layer.state_dict()
    renamed = {_WRAPPER.sub("", name): value for name, value in params.items()}
    if set(renamed) == set(target):
        return renamed
    theirs = [v for k, v in renamed.items() if k.startswith("st_net.")]
    ours = [k for k in target if k.startswith("st_net.")]
    if len(theirs) == len(ours) and all(v.shape == target[k].shape for k, v in zip(ours, theirs, strict=True)):
        by_order = dict(zip(ours, theirs, strict=True))
        return {**{k: v for k, v in renamed.items() if not k.startswith("st_net.")}, **by_order}
    missing = sorted(set(target) - set(renamed))[:3]
    raise ModelError(f"{where}: the original's tensors do not match flowood's (flowood has {', '.join(missing)} "
                     "that the original lacks); build the flowood model with the options the original was trained "
                     "with (the paper's networks: weight_norm on, invconv plain, no tabular actnorm)")


def _actnorm_state(params: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"bias": params["bias"].reshape(-1), "log_scale": params["logs"].reshape(-1),
            "initialized": torch.tensor(True)}


def _invconv_state(params: dict[str, Tensor], layer: InvertibleConv1x1, where: str) -> dict[str, Tensor]:
    if layer.lu:
        raise ModelError(f"{where}: the original's 1x1 convolutions are plain matrices; build the flowood model "
                         "with invconv='plain'")
    return {"weight": params["weight"]}


def load_original_state_dict(flow: FlowModel, checkpoint: Mapping[str, Any], strict_shapes: bool = True
                             ) -> FlowModel:
    """Copy the original code's weights into a flowood model built with the same options.

    Args:
        flow: a flowood model of the same architecture (e.g. ``RealNVP((1, 28, 28), num_blocks=6,
            num_mid_channels=64)`` for the paper's FashionMNIST RealNVP).
        checkpoint: the original's checkpoint (``torch.load(path, map_location="cpu")``) or its model's
            state dict.
        strict_shapes: refuse tensors whose shapes differ (always wanted; off only to debug).

    Returns:
        ``flow`` with the weights loaded (ActNorm layers marked initialised). A tabular flow's
        :class:`~flowood.flows.layers.Standardize` is set to the identity: the original normalises UCI data with
        the training class's mean and deviation before its model, so give the loaded flow data normalised so.

    Raises:
        ModelError: the architectures differ (layer counts, kinds, names or shapes), naming the first layer
            that does not match.

    Example:
        >>> import torch
        >>> from flowood.flows import RealNVPTabular
        >>> a = RealNVPTabular(4, num_coupling_layers=2, num_hidden_units=8, standardize=False)
        >>> b = RealNVPTabular(4, num_coupling_layers=2, num_hidden_units=8)
        >>> original = {f"body.{i}.{k}": v for i, step in enumerate(a.steps) for k, v in step.state_dict().items()}
        >>> x = torch.randn(3, 4)
        >>> torch.allclose(load_original_state_dict(b, original).log_prob(x), a.log_prob(x))
        True
    """
    ours = _flowood_layers(flow)
    theirs = _original_layers(original_state_dict(checkpoint))
    if [k for _, k, _ in ours] != [k for _, k, _ in theirs]:
        raise ModelError(f"the original model has {len(theirs)} layers with parameters "
                         f"({_summary(theirs)}), the flowood model {len(ours)} ({_summary(ours)}); build the "
                         "flowood model with the original's options")
    for (name, kind, layer), (prefix, _, params) in zip(ours, theirs, strict=True):
        where = f"flowood step {name} (original {prefix.rstrip('.')})"
        state = (_coupling_state(params, layer, where) if kind == "coupling" else
                 _actnorm_state(params) if kind == "actnorm" else _invconv_state(params, layer, where))
        target = layer.state_dict()
        for key, value in state.items():
            if strict_shapes and tuple(value.shape) != tuple(target[key].shape):
                raise ModelError(f"{where}: {key} has shape {tuple(value.shape)} in the original, "
                                 f"{tuple(target[key].shape)} in flowood")
        layer.load_state_dict({k: v.reshape(target[k].shape) for k, v in state.items()})
    for layer in flow.modules():  # the original normalises its data before the model: here that is the identity
        if isinstance(layer, Standardize):
            layer.set_identity()
    return flow


def _summary(layers: list[tuple[str, str, Any]]) -> str:
    counts: dict[str, int] = {}
    for _, kind, _ in layers:
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())
