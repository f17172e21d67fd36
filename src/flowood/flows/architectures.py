"""Multi-scale RealNVP, Glow, the tabular RealNVP and MAF: one :class:`~flowood.flows.FlowModel` subclass each,
registered in :data:`~flowood.flows.config.FLOWS` and built from a :class:`FlowConfig`.

Variants (the cycle mask, horizontal masks, bottleneck st-networks) are configuration values,
never new classes: ``RealNVP(mask="cycle", num_scales=1, num_coupling_layers_per_scale=8)`` is
the paper's cycle-mask flow. A flow of one's own is a subclass of :class:`RegisteredFlow` with
``build_steps`` and a :func:`register_flow` line.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from flowood.flows.autoregressive import MaskedAffineAutoregressive, ReversePermutation
from flowood.flows.config import FLOWS, ConfigError, FlowConfig
from flowood.flows.coupling import AffineCoupling, make_coupling
from flowood.flows.layers import ActNorm, InvertibleConv1x1, Squeeze, Standardize
from flowood.flows.masks import make_mask
from flowood.flows.model import FlowModel, Split
from flowood.flows.nets import make_st_net, st_net_options
from flowood.options import options_of

__all__ = ["RealNVP", "Glow", "RealNVPTabular", "MAF", "RegisteredFlow", "register_flow", "build_flow"]


def _coupling(cfg: FlowConfig, mask_kind: str, shape: tuple[int, int, int], index: int, mid: int) -> AffineCoupling:
    mask = make_mask(mask_kind, shape, index)
    c, h, w = shape
    if mask.is_channel_split:
        cond = c - c // 2 if index % 2 == 0 else c // 2
        out = 2 * (c - cond)
    else:
        cond, out = c, 2 * c
    if mask.is_packed:
        w = w // 2  # the st-network sees half of each row
    # every network takes the values it declares; the original doubles the st-network's normalised input for
    # checkerboard masks (half of it is zeros)
    offered = dict(spatial=(h, w), mid_channels=mid, num_blocks=cfg.num_blocks, latent_dim=cfg.latent_dim,
                   batchnorm=cfg.batchnorm, skip=cfg.skip, init_zeros=cfg.init_zeros, weight_norm=cfg.weight_norm,
                   double_after_norm=mask.kind == "checkerboard", dropout=cfg.dropout)
    net = make_st_net(cfg.st_type, cond, out, **st_net_options(cfg.st_type, offered))
    return make_coupling(mask, net)


def _realnvp_steps(cfg: FlowConfig) -> list[tuple[str, nn.Module]]:
    c, h, w = cfg.input_shape
    mid = cfg.num_mid_channels
    steps: list[tuple[str, nn.Module]] = []
    for scale in range(cfg.num_scales):
        last = scale == cfg.num_scales - 1
        n_spatial = cfg.num_coupling_layers_per_scale or (4 if last else 3)
        for i in range(n_spatial):
            steps.append((f"scale{scale}.coupling{i}", _coupling(cfg, cfg.mask, (c, h, w), i, mid)))
        if last:
            break
        steps.append((f"scale{scale}.squeeze", Squeeze()))
        c, h, w = 4 * c, h // 2, w // 2
        mid *= 2
        for i in range(3):
            steps.append((f"scale{scale}.channel_coupling{i}", _coupling(cfg, "channel", (c, h, w), i, mid)))
        steps.append((f"scale{scale}.split", Split()))
        c //= 2
    return steps


def _glow_steps(cfg: FlowConfig) -> list[tuple[str, nn.Module]]:
    c, h, w = cfg.input_shape
    steps: list[tuple[str, nn.Module]] = []
    for scale in range(cfg.num_scales):
        steps.append((f"scale{scale}.squeeze", Squeeze()))
        c, h, w = 4 * c, h // 2, w // 2
        for k in range(cfg.num_coupling_layers_per_scale):
            prefix = f"scale{scale}.step{k}"
            steps.append((f"{prefix}.actnorm", ActNorm(c)))
            steps.append((f"{prefix}.invconv", InvertibleConv1x1(c, lu=cfg.invconv == "lu")))
            # Glow mixes channels with the 1x1 convolution, so its channel mask stays fixed;
            # spatial masks alternate as in RealNVP.
            index = 0 if cfg.mask == "channel" else k
            steps.append((f"{prefix}.coupling", _coupling(cfg, cfg.mask, (c, h, w), index, cfg.num_mid_channels)))
        if scale < cfg.num_scales - 1:
            steps.append((f"scale{scale}.split", Split()))
            c //= 2
    return steps


def _tabular_steps(cfg: FlowConfig) -> list[tuple[str, nn.Module]]:
    (d,) = cfg.input_shape
    steps: list[tuple[str, nn.Module]] = [("standardize", Standardize(d))] if cfg.standardize else []
    if cfg.actnorm:
        steps.append(("actnorm", ActNorm(d)))
    for i in range(cfg.num_coupling_layers):
        mask = make_mask("tabular", (d,), i)
        net = make_st_net("mlp", d, 2 * d, hidden_units=cfg.num_hidden_units, num_hidden_layers=cfg.num_hidden_layers,
                          init_zeros=cfg.init_zeros, dropout=cfg.dropout)
        steps.append((f"coupling{i}", make_coupling(mask, net)))
    return steps


def _maf_steps(cfg: FlowConfig) -> list[tuple[str, nn.Module]]:
    (d,) = cfg.input_shape
    steps: list[tuple[str, nn.Module]] = [("standardize", Standardize(d))] if cfg.standardize else []
    if cfg.actnorm:
        steps.append(("actnorm", ActNorm(d)))
    for i in range(cfg.num_coupling_layers):
        if i:
            steps.append((f"reverse{i}", ReversePermutation()))
        steps.append((f"autoregressive{i}", MaskedAffineAutoregressive(d, cfg.num_hidden_units, cfg.num_hidden_layers,
                                                                       cfg.init_zeros)))
    return steps


class RegisteredFlow(FlowModel):
    """A flow built from a :class:`FlowConfig`: the base of RealNVP, Glow, RealNVPTabular and MAF.

    A subclass declares the options it takes (``options``), how a config's unset values default (``defaults``,
    ``fixed``), what it models (``inputs``) and its layers (``build_steps``); :func:`register_flow` makes its name
    a valid ``flow`` option.

    Args:
        input_shape: one sample's shape: ``(C, H, W)`` for images, or the number of features ``D`` for vectors.
        config: a :class:`FlowConfig` (or a dict of its fields) to start from; ``flow`` is this class's.
        **options: the options this flow takes (see ``options``), over those of ``config``.

    Raises:
        ConfigError: an option this flow does not take, or a value that cannot work.
    """

    #: the registered name; set by :func:`register_flow`.
    name: ClassVar[str] = ""
    #: ``"images"`` (``(C, H, W)``, 8-bit data through the logit transform) or ``"vectors"`` (``(D,)``).
    inputs: ClassVar[str] = "images"
    #: the :class:`FlowConfig` options the constructor accepts, besides ``input_shape``.
    options: ClassVar[tuple[str, ...]] = ()
    #: values given to options left unset (None).
    defaults: ClassVar[dict[str, Any]] = {}
    #: values this flow always uses.
    fixed: ClassVar[dict[str, Any]] = {}
    #: masks it allows beyond the spatial ones.
    extra_masks: ClassVar[tuple[str, ...]] = ()

    def __init__(self, input_shape: Any = (1, 28, 28), config: FlowConfig | dict[str, Any] | None = None,
                 **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ConfigError(f"{self.name} does not take {', '.join(unknown)}; it takes "
                              f"{', '.join(self.options)}")
        values = _config_values(config)
        values.update(options, flow=self.name, input_shape=_shape(input_shape, self.inputs))
        cfg = FlowConfig.from_dict(values).resolved()
        alpha = cfg.logit_alpha if self.inputs == "images" else None
        super().__init__(cfg.input_shape, _built_steps(self, cfg), logit_alpha=alpha, config=cfg.to_dict())

    @classmethod
    def build_steps(cls, config: FlowConfig) -> list[tuple[str, nn.Module]]:  # pragma: no cover - abstract
        """The named layers of this flow for a resolved config."""
        raise NotImplementedError

    @classmethod
    def squeezes(cls, config: FlowConfig) -> int:
        """How many times the flow halves the image's height and width (0 for vector flows)."""
        return 0


def register_flow(name: str, *, replace: bool = False) -> Any:
    """Class decorator that registers a :class:`RegisteredFlow` subclass under ``name`` in :data:`FLOWS`."""
    def add(cls: type[RegisteredFlow]) -> type[RegisteredFlow]:
        FLOWS.register(name, cls, replace=replace)
        cls.name = name
        return cls

    return add


def _config_values(config: FlowConfig | dict[str, Any] | None) -> dict[str, Any]:
    if config is None:
        return FlowConfig().to_dict()
    return (config if isinstance(config, FlowConfig) else FlowConfig.from_dict(config)).to_dict()


def _shape(input_shape: Any, inputs: str) -> tuple[int, ...]:
    if inputs == "vectors" and not isinstance(input_shape, (tuple, list)):
        return (int(input_shape),)
    return tuple(int(s) for s in input_shape)


def _built_steps(flow: RegisteredFlow, cfg: FlowConfig) -> list[tuple[str, nn.Module]]:
    try:
        return type(flow).build_steps(cfg)
    except ConfigError:
        raise
    except ValueError as err:  # a layer that cannot exist at some scale, e.g. a spatial mask on 1x1 pixels
        raise ConfigError(f"{cfg.flow} cannot be built for input shape {cfg.input_shape} with these options: {err}. "
                          "Use fewer num_scales, larger images, or another mask") from err


@register_flow("RealNVP")
class RealNVP(RegisteredFlow):
    """Multi-scale RealNVP (Dinh et al. 2017), as configured in the paper's code.

    Per scale: ``num_coupling_layers_per_scale`` couplings with the spatial ``mask`` (3 by default,
    4 at the last scale), then squeeze, three channel-wise couplings, and half of the channels
    factored out. The st-network width doubles after each squeeze.

    References:
        Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017.

    Example:
        >>> flow = RealNVP((1, 8, 8), num_blocks=1, num_mid_channels=8)
        >>> z, log_det = flow(torch.rand(2, 1, 8, 8).clamp(0.01, 0.99))
        >>> tuple(z.shape)
        (2, 1, 8, 8)
    """

    options = ("num_scales", "num_blocks", "num_mid_channels", "num_coupling_layers_per_scale", "st_type", "mask",
               "latent_dim", "batchnorm", "skip", "weight_norm", "init_zeros", "logit_alpha")
    defaults: ClassVar[dict[str, Any]] = {"st_type": "resnet", "mask": "checkerboard"}

    @classmethod
    def build_steps(cls, config: FlowConfig) -> list[tuple[str, nn.Module]]:
        return _realnvp_steps(config)

    @classmethod
    def squeezes(cls, config: FlowConfig) -> int:
        return config.num_scales - 1


@register_flow("Glow")
class Glow(RegisteredFlow):
    """Glow (Kingma & Dhariwal 2018): per scale, squeeze, then steps of ActNorm, invertible 1x1
    convolution and affine coupling; half of the channels factored out between scales.

    References:
        Kingma, Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions. NeurIPS 2018.

    Example:
        >>> flow = Glow((1, 8, 8), num_coupling_layers_per_scale=2, num_mid_channels=8, num_blocks=1)
        >>> flow.log_prob(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2])
    """

    options = ("num_scales", "num_coupling_layers_per_scale", "num_blocks", "num_mid_channels", "st_type", "mask",
               "latent_dim", "invconv", "weight_norm", "init_zeros", "logit_alpha")
    defaults: ClassVar[dict[str, Any]] = {"st_type": "glow_convnet", "mask": "channel",
                                          "num_coupling_layers_per_scale": 8}
    extra_masks = ("channel",)

    @classmethod
    def build_steps(cls, config: FlowConfig) -> list[tuple[str, nn.Module]]:
        return _glow_steps(config)

    @classmethod
    def squeezes(cls, config: FlowConfig) -> int:
        return config.num_scales


@register_flow("RealNVPTabular")
class RealNVPTabular(RegisteredFlow):
    """RealNVP for vectors: a fixed standardisation with the training set's statistics, then couplings on
    alternating halves of the features with MLP st-networks (the original's tabular RealNVP).

    Example:
        >>> flow = RealNVPTabular(6, num_coupling_layers=2, num_hidden_units=16)
        >>> flow.log_prob(torch.randn(4, 6)).shape
        torch.Size([4])
    """

    inputs = "vectors"
    options = ("num_coupling_layers", "num_hidden_layers", "num_hidden_units", "init_zeros", "dropout",
               "standardize", "actnorm")
    defaults: ClassVar[dict[str, Any]] = {"actnorm": False}
    fixed: ClassVar[dict[str, Any]] = {"st_type": "mlp", "mask": "tabular"}

    @classmethod
    def build_steps(cls, config: FlowConfig) -> list[tuple[str, nn.Module]]:
        return _tabular_steps(config)


@register_flow("MAF")
class MAF(RegisteredFlow):
    """Masked autoregressive flow for vectors: ``num_coupling_layers`` MADE layers (each feature's
    scale and shift depend on every earlier feature), the feature order reversed between layers,
    after a fixed standardisation and an ActNorm. Stronger than the coupling RealNVPTabular per
    layer; sampling takes one pass per feature.

    References:
        Papamakarios, Pavlakou, Murray. Masked Autoregressive Flow for Density Estimation. NeurIPS 2017.

    Example:
        >>> flow = MAF(6, num_coupling_layers=2, num_hidden_units=16)
        >>> flow.log_prob(torch.randn(4, 6)).shape
        torch.Size([4])
    """

    inputs = "vectors"
    options = ("num_coupling_layers", "num_hidden_layers", "num_hidden_units", "init_zeros", "standardize", "actnorm")
    defaults: ClassVar[dict[str, Any]] = {"actnorm": True}
    fixed: ClassVar[dict[str, Any]] = {"st_type": "made", "mask": "autoregressive"}

    @classmethod
    def build_steps(cls, config: FlowConfig) -> list[tuple[str, nn.Module]]:
        return _maf_steps(config)


def build_flow(config: FlowConfig | dict[str, Any] | None = None, **overrides: Any) -> FlowModel:
    """Build any registered flow from a :class:`FlowConfig` or a dict of its fields.

    Example:
        >>> flow = build_flow(flow="RealNVP", input_shape=(1, 8, 8), num_blocks=1, num_mid_channels=8)
        >>> flow.log_prob(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2])
    """
    values = _config_values(config)
    values.update(overrides)
    cfg = FlowConfig.from_dict(values).resolved()
    family = FLOWS[cfg.flow]
    return family(cfg.input_shape, config=cfg)


def _document(flow: type[RegisteredFlow]) -> None:
    """Append an ``Args`` section built from the options' own help lines (see :class:`FlowConfig`)."""
    helps = {f.name: info.help for f, info, _ in options_of(FlowConfig)}
    lines = [f"        {name}: {helps[name]}" for name in flow.options]
    first = "input_shape: one sample's shape." if flow.inputs == "images" else "input_shape: the number of features."
    flow.__doc__ = (flow.__doc__ or "").rstrip() + f"\n\n    Args:\n        {first}\n" \
        + "        config: a FlowConfig (or a dict of its fields) to start from.\n" + "\n".join(lines) + "\n"


for _flow in (RealNVP, Glow, RealNVPTabular, MAF):
    _document(_flow)
