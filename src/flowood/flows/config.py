"""One configuration for every flow, with the original code's option names, and its validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowood.errors import closest
from flowood.flows.masks import spatial_mask_kinds
from flowood.flows.nets import image_st_types
from flowood.options import ConfigError, default_of, from_mapping, option, options_of, to_mapping
from flowood.variants import Registry

__all__ = ["FlowConfig", "FLOWS", "FLOW_ALIASES", "ConfigError"]

#: every flow by name, a :class:`flowood.flows.FlowModel` subclass each (:mod:`flowood.flows.architectures`
#: registers RealNVP, Glow, RealNVPTabular and MAF). A flow class declares what a config needs from it:
#: ``inputs`` ("images" or "vectors"), ``defaults`` (values for options left unset), ``fixed`` (values it always
#: uses), ``extra_masks`` (masks beyond the spatial ones) and ``squeezes(config)``.
FLOWS: Registry[Any] = Registry("flow", "flow")
#: other spellings of flow names.
FLOW_SPELLINGS = {"tabular": "RealNVPTabular", "realnvp_tabular": "RealNVPTabular"}

#: the original code's fixed variants, each a setting of the general models here.
FLOW_ALIASES: dict[str, dict[str, Any]] = {
    "RealNVPCycleMask": {"flow": "RealNVP", "mask": "cycle", "num_scales": 1, "num_coupling_layers_per_scale": 8},
    "RealNVPMaskHorizontal": {"flow": "RealNVP", "mask": "horizontal", "num_scales": 1,
                              "num_coupling_layers_per_scale": 8},
    "RealNVP8Layers": {"flow": "RealNVP", "mask": "checkerboard", "num_scales": 1, "num_coupling_layers_per_scale": 8},
    "RealNVPSmall": {"flow": "RealNVP", "mask": "checkerboard", "num_scales": 1, "num_coupling_layers_per_scale": 2},
}




@dataclass
class FlowConfig:
    """Architecture of a flow; option names follow the paper's original training scripts.

    Every field is an option (see :mod:`flowood.options`): ``flowood train --help`` and the CLI reference
    show each one's help line; ``FlowConfig.help()`` lists them here.
    """

    flow: str = option("RealNVP", "the flow: RealNVP, Glow (images), RealNVPTabular, MAF (vectors), or one of the "
                       f"original code's fixed variants {', '.join(FLOW_ALIASES)}", metavar="NAME")
    input_shape: tuple[int, ...] = option((1, 28, 28), "one sample's shape, (C, H, W) for images, (D,) for vectors "
                                          "(set from the data)", flag=False)
    num_scales: int = option(2, "scales of the multi-scale architecture (RealNVP, Glow)")
    num_blocks: int = option(8, "blocks of each st-network: residual or highway blocks, extra conv layers of a "
                             "convnet (glow_convnet and autoencoder have a fixed depth)")
    num_mid_channels: int = option(64, "width of the st-networks (RealNVP doubles it after each squeeze)")
    num_coupling_layers_per_scale: int | None = option(
        None, "RealNVP: spatial-mask couplings per scale (default 3, and 4 at the last scale, as Dinh et al.); "
              "Glow: steps per scale (default 8)")
    st_type: str | None = option(None, lambda: "st-network of an image flow: "
                                 f"{', '.join(image_st_types())} (the original code's names: autoencoder is the "
                                 "paper's bottleneck; conv_bottleneck is flowood's own; default: resnet for RealNVP, "
                                 "glow_convnet for Glow)")
    mask: str | None = option(None, lambda: "coupling mask of an image flow: "
                              f"{', '.join(spatial_mask_kinds())} (checkerboard: RealNVP's default); Glow also "
                              "channel (its default). checkerboard_packed computes checkerboard's pixels on half-width "
                              "tensors: faster, not the paper's model")
    latent_dim: int = option(100, "bottleneck size l of the autoencoder and resnet_ae st-networks")
    batchnorm: bool = option(True, "BatchNorm inside resnet st-networks (the original's --no_batchnorm turns it off)")
    weight_norm: bool = option(True, "weight-normalised convolutions in resnet, resnet_ae and convnet st-networks, as "
                               "the original; off: plain convolutions (not the paper's model)")
    skip: bool = option(True, "skip connections in resnet st-networks (the original's --no_skip turns them off)")
    init_zeros: bool = option(False, "start each st-network's output layer at zero, so couplings start as the "
                              "identity (the paper's commands do not; highway and glow_convnet always do)")
    logit_alpha: float = option(0.05, "alpha of the logit preprocessing of image flows (RealNVP's 0.05)")
    num_coupling_layers: int = option(8, "couplings of a tabular flow (MAF: autoregressive layers)")
    num_hidden_layers: int = option(1, "hidden layers of a tabular st-network after the first (MAF: of each MADE)")
    num_hidden_units: int = option(256, "width of a tabular st-network (MAF: of each MADE)")
    invconv: str = option("plain", "Glow's invertible 1x1 convolution: plain (a free matrix, the original's) or lu "
                          "(LU-parametrised: a free log-determinant; not the paper's model)", choices=("plain", "lu"))
    dropout: bool = option(False, "RealNVPTabular: dropout (0.5) after the first hidden layer of each st-network "
                           "(the original's --dropout)")
    standardize: bool = option(True, "tabular flows first standardise the features with the training set's mean "
                               "and standard deviation (fixed, no parameters: the original's normalisation of UCI "
                               "data); the likelihood stays that of the raw features")
    actnorm: bool | None = option(None, "tabular flows start with an ActNorm layer that standardises the features "
                                  "from the first batch, then learned (default: off for RealNVPTabular, as the "
                                  "original; on for MAF)")

    @classmethod
    def help(cls) -> str:
        """Every option with its default and help line."""
        return "\n".join(f"{f.name} (default {default_of(f)!r}): {info.help}" for f, info, _ in options_of(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FlowConfig:
        """Build from a dict of options, refusing unknown keys with the closest valid name."""
        return from_mapping(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return to_mapping(self)

    def resolved(self, check_shape: bool = True) -> "FlowConfig":
        """A copy with aliases expanded, defaults filled in and every value checked.

        Args:
            check_shape: also check that ``input_shape`` suits the architecture; without it only
                the shape-independent values (names, sizes) are checked, e.g. before data are loaded.
        """
        values = self.to_dict()
        if values["flow"] in FLOW_ALIASES:
            values.update(FLOW_ALIASES[values["flow"]])
        values["flow"] = self.flow_name(values["flow"])
        cfg = FlowConfig.from_dict(values)
        family = FLOWS[cfg.flow]
        for name, value in family.defaults.items():
            if getattr(cfg, name) is None:
                setattr(cfg, name, value)
        for name, value in family.fixed.items():
            setattr(cfg, name, value)
        cfg.check(check_shape)
        return cfg

    @staticmethod
    def flow_name(name: str) -> str:
        """The registered name of a flow, whatever its case or other spelling (``"glow"`` -> ``"Glow"``)."""
        by_lower = {n.lower(): n for n in FLOWS}
        by_lower.update(FLOW_SPELLINGS)
        found = by_lower.get(str(name).lower())
        if found is None:
            known = tuple(FLOWS) + tuple(FLOW_ALIASES)
            raise ConfigError(f"unknown flow {name!r}{closest(str(name), known)}; choose one of {', '.join(known)}")
        return found

    def check(self, check_shape: bool = True) -> None:
        """Refuse values that cannot work, naming the option (see :meth:`resolved`)."""
        def positive(name: str) -> None:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

        for name in ("num_scales", "num_mid_channels", "latent_dim", "num_coupling_layers", "num_hidden_units",
                     "num_coupling_layers_per_scale"):
            positive(name)
        for name in ("num_blocks", "num_hidden_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if not 0.0 <= float(self.logit_alpha) < 0.5:
            raise ConfigError(f"logit_alpha must be in [0, 0.5), got {self.logit_alpha}")
        shape = self.input_shape
        family = FLOWS[self.flow]
        if family.inputs == "vectors":
            if check_shape and (len(shape) != 1 or shape[0] < 2):
                raise ConfigError(f"{self.flow} models vectors: input_shape must be (D,) with D >= 2, got {shape}")
            return
        if check_shape and (len(shape) != 3 or min(shape) < 1):
            raise ConfigError(f"{self.flow} models images: input_shape must be (C, H, W), got {shape}; "
                              f"use flow {' or '.join(FLOWS.names(lambda f: f.inputs == 'vectors'))} for vectors")
        image_nets = image_st_types()
        if self.st_type not in image_nets:
            raise ConfigError(f"unknown st_type {self.st_type!r}{closest(str(self.st_type), image_nets)}; "
                              f"choose one of {', '.join(image_nets)}")
        allowed = spatial_mask_kinds() + tuple(family.extra_masks)
        if self.mask not in allowed:
            raise ConfigError(f"mask {self.mask!r} does not work with {self.flow}{closest(self.mask, allowed)}; "
                              f"choose one of {', '.join(allowed)}")
        if not check_shape:
            return
        _, h, w = shape
        squeezes = family.squeezes(self)
        factor = 2 ** squeezes
        if h % factor or w % factor:
            raise ConfigError(f"{self.flow} with num_scales={self.num_scales} squeezes {squeezes} times, so image "
                              f"height and width must be divisible by {factor}; got {h}x{w}. Lower num_scales or "
                              "resize the images")
