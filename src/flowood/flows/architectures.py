"""Multi-scale RealNVP, Glow, the tabular RealNVP and MAF, built from a :class:`FlowConfig`.

Variants (the cycle mask, horizontal masks, bottleneck st-networks) are configuration values,
never new classes: ``RealNVP(mask="cycle", num_scales=1, num_coupling_layers_per_scale=8)`` is
the paper's cycle-mask flow.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from flowood.flows.autoregressive import MaskedAffineAutoregressive, ReversePermutation
from flowood.flows.config import TABULAR_FLOWS, ConfigError, FlowConfig
from flowood.flows.coupling import AffineCoupling
from flowood.flows.layers import ActNorm, InvertibleConv1x1, Squeeze, Standardize
from flowood.flows.masks import make_mask
from flowood.flows.model import FlowModel, Split
from flowood.flows.nets import make_st_net
from flowood.options import options_of

__all__ = ["RealNVP", "Glow", "RealNVPTabular", "MAF", "build_flow"]


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
    # the original doubles the st-network's normalised input for checkerboard masks (half of it is zeros)
    net = make_st_net(cfg.st_type, cond, out, (h, w), mid, cfg.num_blocks, cfg.latent_dim, cfg.batchnorm,
                      cfg.skip, cfg.init_zeros, double_after_norm=mask.kind == "checkerboard",
                      weight_norm=cfg.weight_norm)
    return AffineCoupling(mask, net)


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
        if cfg.st_type != "autoencoder":
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
        net = make_st_net("mlp", d, 2 * d, mid_channels=cfg.num_hidden_units, num_blocks=cfg.num_hidden_layers,
                          init_zeros=cfg.init_zeros, dropout=cfg.dropout)
        steps.append((f"coupling{i}", AffineCoupling(mask, net)))
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


def build_flow(config: FlowConfig | dict[str, Any] | None = None, **overrides: Any) -> FlowModel:
    """Build any flow from a :class:`FlowConfig` or a dict of its fields.

    Example:
        >>> flow = build_flow(flow="RealNVP", input_shape=(1, 8, 8), num_blocks=1, num_mid_channels=8)
        >>> flow.log_prob(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2])
    """
    if config is None:
        config = FlowConfig()
    elif isinstance(config, dict):
        config = FlowConfig.from_dict(config)
    if overrides:
        values = config.to_dict()
        values.update(overrides)
        config = FlowConfig.from_dict(values)
    cfg = config.resolved()
    builders = {"RealNVP": _realnvp_steps, "Glow": _glow_steps, "RealNVPTabular": _tabular_steps, "MAF": _maf_steps}
    try:
        steps = builders[cfg.flow](cfg)
    except ConfigError:
        raise
    except ValueError as err:  # a layer that cannot exist at some scale, e.g. a spatial mask on 1x1 pixels
        raise ConfigError(f"{cfg.flow} cannot be built for input shape {cfg.input_shape} with these options: {err}. "
                          "Use fewer num_scales, larger images, or another mask") from err
    alpha = None if cfg.flow in TABULAR_FLOWS else cfg.logit_alpha
    return FlowModel(cfg.input_shape, steps, logit_alpha=alpha, config=cfg.to_dict())


_D = FlowConfig  # option defaults, read from their one definition


def _document(factory: Any, names: tuple[str, ...]) -> Any:
    """Append an ``Args`` section built from the options' own help lines (see :class:`FlowConfig`)."""
    helps = {f.name: info.help for f, info, _ in options_of(FlowConfig)}
    lines = [f"        {name}: {helps[name]}" for name in names]
    factory.__doc__ = (factory.__doc__ or "").rstrip() + "\n\n    Args:\n        input_shape: one sample's shape.\n" \
        + "\n".join(lines) + "\n"
    return factory


def RealNVP(input_shape: tuple[int, int, int] = (1, 28, 28), *, num_scales: int = _D.num_scales,
            num_blocks: int = _D.num_blocks, num_mid_channels: int = _D.num_mid_channels,
            num_coupling_layers_per_scale: int | None = _D.num_coupling_layers_per_scale,
            st_type: str | None = _D.st_type, mask: str | None = _D.mask, latent_dim: int = _D.latent_dim,
            batchnorm: bool = _D.batchnorm, skip: bool = _D.skip, weight_norm: bool = _D.weight_norm,
            init_zeros: bool = _D.init_zeros, logit_alpha: float = _D.logit_alpha) -> FlowModel:
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
    options = {k: v for k, v in locals().items() if k != "input_shape"}
    return build_flow(flow="RealNVP", input_shape=tuple(input_shape), **options)


def Glow(input_shape: tuple[int, int, int] = (1, 28, 28), *, num_scales: int = _D.num_scales,
         num_coupling_layers_per_scale: int | None = _D.num_coupling_layers_per_scale,
         num_blocks: int = _D.num_blocks, num_mid_channels: int = _D.num_mid_channels, st_type: str | None = _D.st_type,
         mask: str | None = _D.mask, latent_dim: int = _D.latent_dim, invconv: str = _D.invconv,
         weight_norm: bool = _D.weight_norm, init_zeros: bool = _D.init_zeros,
         logit_alpha: float = _D.logit_alpha) -> FlowModel:
    """Glow (Kingma & Dhariwal 2018): per scale, squeeze, then steps of ActNorm, invertible 1x1
    convolution and affine coupling; half of the channels factored out between scales.

    References:
        Kingma, Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions. NeurIPS 2018.

    Example:
        >>> flow = Glow((1, 8, 8), num_coupling_layers_per_scale=2, num_mid_channels=8, num_blocks=1)
        >>> flow.log_prob(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2])
    """
    options = {k: v for k, v in locals().items() if k != "input_shape"}
    return build_flow(flow="Glow", input_shape=tuple(input_shape), **options)


def RealNVPTabular(dim: int, *, num_coupling_layers: int = _D.num_coupling_layers,
                   num_hidden_layers: int = _D.num_hidden_layers, num_hidden_units: int = _D.num_hidden_units,
                   init_zeros: bool = _D.init_zeros, dropout: bool = _D.dropout, standardize: bool = _D.standardize,
                   actnorm: bool | None = _D.actnorm) -> FlowModel:
    """RealNVP for vectors: a fixed standardisation with the training set's statistics, then couplings on
    alternating halves of the features with MLP st-networks (the original's tabular RealNVP).

    Example:
        >>> flow = RealNVPTabular(6, num_coupling_layers=2, num_hidden_units=16)
        >>> flow.log_prob(torch.randn(4, 6)).shape
        torch.Size([4])
    """
    options = {k: v for k, v in locals().items() if k != "dim"}
    return build_flow(flow="RealNVPTabular", input_shape=(int(dim),), **options)


def MAF(dim: int, *, num_coupling_layers: int = _D.num_coupling_layers,
        num_hidden_layers: int = _D.num_hidden_layers, num_hidden_units: int = _D.num_hidden_units,
        init_zeros: bool = _D.init_zeros, standardize: bool = _D.standardize,
        actnorm: bool | None = _D.actnorm) -> FlowModel:
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
    options = {k: v for k, v in locals().items() if k != "dim"}
    return build_flow(flow="MAF", input_shape=(int(dim),), **options)


_document(RealNVP, ("num_scales", "num_blocks", "num_mid_channels", "num_coupling_layers_per_scale", "st_type", "mask",
                    "latent_dim", "batchnorm", "skip", "weight_norm", "init_zeros", "logit_alpha"))
_document(Glow, ("num_scales", "num_coupling_layers_per_scale", "num_blocks", "num_mid_channels", "st_type", "mask",
                 "latent_dim", "invconv", "weight_norm", "init_zeros", "logit_alpha"))
_document(RealNVPTabular, ("num_coupling_layers", "num_hidden_layers", "num_hidden_units", "init_zeros", "dropout",
                           "standardize", "actnorm"))
_document(MAF, ("num_coupling_layers", "num_hidden_layers", "num_hidden_units", "init_zeros", "standardize",
                "actnorm"))
