"""Normalizing flows in pure PyTorch: layers, masks, st-networks, RealNVP, Glow, tabular RealNVP, MAF.

No Lightning, no I/O: ``from flowood.flows import Glow`` pulls in torch and nothing heavy.

Example:
    >>> from flowood.flows import RealNVP
    >>> flow = RealNVP((1, 8, 8), num_blocks=1, num_mid_channels=8)
    >>> flow.bits_per_dim(torch.rand(4, 1, 8, 8)).shape
    torch.Size([4])
"""

from flowood.flows.architectures import MAF, Glow, RealNVP, RealNVPTabular, build_flow
from flowood.flows.autoregressive import MADE, MaskedAffineAutoregressive, ReversePermutation
from flowood.flows.base import FlowLayer, LayerRecord
from flowood.flows.config import FLOW_ALIASES, FLOW_NAMES, TABULAR_FLOWS, ConfigError, FlowConfig
from flowood.flows.coupling import AffineCoupling, ChannelCoupling, MaskedCoupling, PackedCheckerboardCoupling
from flowood.flows.layers import ActNorm, InvertibleConv1x1, Squeeze
from flowood.flows.masks import MASK_KINDS, CouplingMask, make_mask
from flowood.flows.model import FlowModel, FlowTrace, Split, StandardNormal
from flowood.flows.nets import ST_TYPES, make_st_net
from flowood.flows.preprocessing import LogitTransform, dequantize, quantize

__all__ = [
    "ActNorm", "AffineCoupling", "ChannelCoupling", "ConfigError", "CouplingMask", "FLOW_ALIASES", "FLOW_NAMES",
    "FlowConfig", "FlowLayer", "FlowModel", "FlowTrace", "Glow", "InvertibleConv1x1", "LayerRecord", "LogitTransform",
    "MADE", "MAF", "MASK_KINDS", "MaskedAffineAutoregressive", "MaskedCoupling", "PackedCheckerboardCoupling",
    "ReversePermutation", "TABULAR_FLOWS", "RealNVP", "RealNVPTabular", "ST_TYPES", "Split", "Squeeze",
    "StandardNormal", "build_flow", "dequantize", "make_mask", "make_st_net", "quantize",
]
