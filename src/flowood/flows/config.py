"""One configuration for every flow, with the original code's option names, and its validation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from flowood.errors import FlowoodError, closest
from flowood.flows.masks import SPATIAL_MASK_KINDS
from flowood.flows.nets import IMAGE_ST_TYPES

__all__ = ["FlowConfig", "FLOW_NAMES", "TABULAR_FLOWS", "FLOW_ALIASES", "ConfigError", "closest"]

FLOW_NAMES = ("RealNVP", "Glow", "RealNVPTabular", "MAF")
#: flows over vectors ``(D,)``; the others model images.
TABULAR_FLOWS = ("RealNVPTabular", "MAF")

#: the original code's fixed variants, each a setting of the general models here.
FLOW_ALIASES: dict[str, dict[str, Any]] = {
    "RealNVPCycleMask": {"flow": "RealNVP", "mask": "cycle", "num_scales": 1, "num_coupling_layers_per_scale": 8},
    "RealNVPMaskHorizontal": {"flow": "RealNVP", "mask": "horizontal", "num_scales": 1,
                              "num_coupling_layers_per_scale": 8},
    "RealNVP8Layers": {"flow": "RealNVP", "mask": "checkerboard", "num_scales": 1, "num_coupling_layers_per_scale": 8},
    "RealNVPSmall": {"flow": "RealNVP", "mask": "checkerboard", "num_scales": 1, "num_coupling_layers_per_scale": 2},
}


class ConfigError(FlowoodError, ValueError):
    """A configuration value that cannot work, with the reason and the fix in its message."""


@dataclass
class FlowConfig:
    """Architecture of a flow. Names follow the paper's original training scripts.

    Attributes:
        flow: ``RealNVP``, ``Glow``, ``RealNVPTabular`` or ``MAF`` (masked autoregressive flow for
            vectors; or an alias of the original's fixed
            variants: ``RealNVPCycleMask``, ``RealNVPMaskHorizontal``, ``RealNVP8Layers``, ``RealNVPSmall``).
        input_shape: one sample's shape, ``(C, H, W)`` for images, ``(D,)`` for vectors.
        num_scales: scales of the multi-scale architecture.
        num_blocks: blocks of each st-network (residual / highway blocks, conv layers for convnet).
        num_mid_channels: width of the st-networks (RealNVP doubles it after each squeeze).
        num_coupling_layers_per_scale: RealNVP: spatial-mask couplings per scale (None: 3, and
            4 at the last scale, as in Dinh et al.); Glow: steps per scale (8 if None).
        st_type: ``resnet``, ``convnet``, ``highway``, ``autoencoder``, ``resnet_ae``
            (None: resnet for RealNVP, convnet for Glow).
        mask: RealNVP's spatial mask, ``checkerboard`` (default), ``checkerboard_packed`` (the same
            pixels, st-networks on half-width gathered tensors: 1.35x-1.6x faster training, not the paper's
            model), ``horizontal``, ``vertical`` or ``cycle``; Glow's coupling mask, ``channel``
            (default) or one of the spatial ones.
        latent_dim: bottleneck size l of ``autoencoder`` and ``resnet_ae`` st-networks.
        batchnorm: BatchNorm inside resnet st-networks (the original's ``--no_batchnorm`` is False).
        skip: skip connections in resnet st-networks (the original's ``--no_skip`` is False).
        init_zeros: zero-initialise each st-network's output layer, so couplings start as identity.
        logit_alpha: the logit preprocessing's alpha for image flows.
        num_coupling_layers: tabular couplings (MAF: autoregressive layers).
        num_hidden_layers: hidden layers of a tabular st-network (MAF: of each MADE) after the first.
        num_hidden_units: width of a tabular st-network (MAF: of each MADE).
        actnorm: tabular flows start with an ActNorm layer, which standardises the features from
            the first batch (and is then learned).
    """

    flow: str = "RealNVP"
    input_shape: tuple[int, ...] = (1, 28, 28)
    num_scales: int = 2
    num_blocks: int = 8
    num_mid_channels: int = 64
    num_coupling_layers_per_scale: int | None = None
    st_type: str | None = None
    mask: str | None = None
    latent_dim: int = 100
    batchnorm: bool = True
    skip: bool = True
    init_zeros: bool = True
    logit_alpha: float = 0.05
    num_coupling_layers: int = 8
    num_hidden_layers: int = 1
    num_hidden_units: int = 256
    actnorm: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FlowConfig":
        """Build from a dict, refusing unknown keys with the closest valid name."""
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(f"unknown flow option {key!r}{closest(key, known)}")
        cfg = cls(**values)
        cfg.input_shape = tuple(int(s) for s in cfg.input_shape)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    def resolved(self, check_shape: bool = True) -> "FlowConfig":
        """A copy with aliases expanded, defaults filled in and every value checked.

        Args:
            check_shape: also check that ``input_shape`` suits the architecture; without it only
                the shape-independent values (names, sizes) are checked, e.g. before data are loaded.
        """
        values = self.to_dict()
        if values["flow"] in FLOW_ALIASES:
            values.update(FLOW_ALIASES[values["flow"]])
        by_lower = {n.lower(): n for n in FLOW_NAMES}
        by_lower.update({"tabular": "RealNVPTabular", "realnvp_tabular": "RealNVPTabular"})
        name = by_lower.get(str(values["flow"]).lower())
        if name is None:
            raise ConfigError(f"unknown flow {values['flow']!r}{closest(values['flow'], FLOW_NAMES + tuple(FLOW_ALIASES))}; "
                              f"choose one of {', '.join(FLOW_NAMES + tuple(FLOW_ALIASES))}")
        values["flow"] = name
        cfg = FlowConfig.from_dict(values)
        cfg._fill_defaults()
        cfg._check(check_shape)
        return cfg

    def _fill_defaults(self) -> None:
        if self.flow == "RealNVP":
            self.st_type = self.st_type or "resnet"
            self.mask = self.mask or "checkerboard"
        elif self.flow == "Glow":
            self.st_type = self.st_type or "convnet"
            self.mask = self.mask or "channel"
            if self.num_coupling_layers_per_scale is None:
                self.num_coupling_layers_per_scale = 8
        elif self.flow == "RealNVPTabular":
            self.st_type = "mlp"
            self.mask = "tabular"
        else:
            self.st_type = "made"
            self.mask = "autoregressive"

    def _check(self, check_shape: bool = True) -> None:
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
        if self.flow in TABULAR_FLOWS:
            if not check_shape:
                return
            if len(shape) != 1 or shape[0] < 2:
                raise ConfigError(f"{self.flow} models vectors: input_shape must be (D,) with D >= 2, got {shape}")
            return
        if check_shape and (len(shape) != 3 or min(shape) < 1):
            raise ConfigError(f"{self.flow} models images: input_shape must be (C, H, W), got {shape}; "
                              "use flow RealNVPTabular or MAF for vectors")
        if self.st_type not in IMAGE_ST_TYPES:
            raise ConfigError(f"unknown st_type {self.st_type!r}{closest(self.st_type, IMAGE_ST_TYPES)}; "
                              f"choose one of {', '.join(IMAGE_ST_TYPES)}")
        allowed = SPATIAL_MASK_KINDS + (("channel",) if self.flow == "Glow" else ())
        if self.mask not in allowed:
            raise ConfigError(f"mask {self.mask!r} does not work with {self.flow}{closest(self.mask, allowed)}; "
                              f"choose one of {', '.join(allowed)}")
        if not check_shape:
            return
        _, h, w = shape
        squeezes = self.num_scales - 1 if self.flow == "RealNVP" else self.num_scales
        factor = 2 ** squeezes
        if h % factor or w % factor:
            raise ConfigError(f"{self.flow} with num_scales={self.num_scales} squeezes {squeezes} times, so image height "
                              f"and width must be divisible by {factor}; got {h}x{w}. Lower num_scales or resize the images")
